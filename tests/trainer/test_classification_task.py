"""The classification task's loss and evaluation, on tiny models (no training run)."""

import jax
import numpy as np

from configs.common import vit_model
from tests.trainer.tiny import tiny_digits_config
from trainer.tasks import create_task


def _task(**model_fields):
    config = tiny_digits_config("unused", label_smoothing=0.0, **{"mixup.mixup_alpha": 0.0})
    config.model = vit_model("ViT-micro", num_classes=10, image_size=8, patch_size=2,
                             num_channels=1, hidden_size=16, num_layers=1, num_heads=2,
                             mlp_dim=16, dropout_rate=0.0, **model_fields)
    return create_task(config)


def _batch(task, size=4, seed=0):
    batch = task.dummy_batch(size)
    batch["image"] = np.random.default_rng(seed).normal(size=batch["image"].shape).astype(
        np.float32)
    batch["label"] = np.arange(size, dtype=np.int32) % task.num_classes
    return batch


def _random_params(task, batch):
    # Jitted: an op-by-op initialisation takes about 10 s even for this tiny model.
    params = jax.jit(task.init_params)(jax.random.key(0), batch)
    rng = np.random.default_rng(1)  # numpy: a jax.random draw per leaf compiles per shape
    return jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32),
                        params)


def test_a_distillation_token_model_trained_on_labels_trains_both_heads():
    """Classification (no teacher) of a model with a distillation token, e.g. a distilled DeiT
    fine-tuned on labels: the loss reads the average of both heads, which is what evaluation
    predicts, so head_dist learns too (timm's DeiT outside distilled training)."""
    task = _task(classifier="token", distillation_token=True, head_bias_init=-2.0)
    batch = _batch(task)
    params = _random_params(task, batch)
    # Jitted, as in training: op by op, these small passes take tens of seconds.
    loss_and_grads = jax.jit(jax.value_and_grad(
        lambda p: task.loss(p, batch, jax.random.key(2), {})[0]))
    loss, grads = loss_and_grads(params)
    assert float(np.abs(grads["head_dist"]["kernel"]).max()) > 0
    assert float(np.abs(grads["head"]["kernel"]).max()) > 0
    # Without dropout, the training loss is the evaluation loss of the same batch.
    loss_sum, count = jax.jit(task.eval_sums)(
        params, {**batch, "mask": np.ones(4, np.float32)}, {})["loss"]
    np.testing.assert_allclose(loss, loss_sum / count, rtol=1e-6)


def test_evaluation_counts_top5_accuracy_over_real_examples_only():
    task = _task()
    batch = _batch(task, size=6)
    params = _random_params(task, batch)
    logits = np.asarray(jax.jit(lambda p, x: task.logits(p, x, None, train=False))(
        params, batch["image"]))
    ranks = (logits > logits[np.arange(6), batch["label"]][:, None]).sum(-1)
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)  # the last two are padding
    sums = jax.jit(task.eval_sums)(params, {**batch, "mask": mask}, {})
    np.testing.assert_allclose(sums["top5_accuracy"], [np.sum((ranks < 5) * mask), 4])
    np.testing.assert_allclose(sums["accuracy"], [np.sum((ranks == 0) * mask), 4])
    # The batch tells the metrics apart: top-5 counts more than top-1, and a padded example
    # would count if the mask were not applied.
    assert np.sum((ranks < 5) * mask) > np.sum((ranks == 0) * mask), ranks
    assert np.sum((ranks < 5) * (1 - mask)) > 0, ranks
