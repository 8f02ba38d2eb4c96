"""The classification task's loss and evaluation, on tiny models (no training run)."""

import jax
import numpy as np

from configs.common import vit_model
from tests.trainer.tiny import tiny_digits_config
from trainer.tasks import create_task


def _task(**model_fields):
    config = tiny_digits_config("unused", label_smoothing=0.0, **{"mixup.mixup_alpha": 0.0})
    fields = dict(image_size=8, patch_size=2, num_channels=1, hidden_size=16, num_layers=1,
                  num_heads=2, mlp_dim=16, dropout_rate=0.0)
    config.model = vit_model("ViT-micro", num_classes=10, **{**fields, **model_fields})
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


def test_init_checkpoint_with_its_grid_from_the_config(tmp_path):
    """``config.init_checkpoint`` starts from an ``.npz``; ``config.init_checkpoint_grid``
    names the grid of a table whose count is a square but whose grid is not (4x9 = 36 = 6x6),
    which would otherwise be read as 6x6 and resized."""
    import pytest

    import vit

    task = _task(image_size=(8, 18))  # patch 2: a 4x9 grid
    params = _random_params(task, _batch(task))
    path = str(tmp_path / "pretrained.npz")
    vit.save_npz(params, path)  # no grid recorded, as in a file converted from elsewhere
    task.config.init_checkpoint = path
    read_as_square = task.pretrained_params(params)["Transformer"]["posembed_input"]
    task.config.init_checkpoint_grid = (4, 9)
    loaded = task.pretrained_params(params)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    assert np.abs(read_as_square["pos_embedding"]
                  - params["Transformer"]["posembed_input"]["pos_embedding"]).max() > 1e-2
    task.config.init_checkpoint_grid = (4, 0)
    with pytest.raises(ValueError, match=r"config.init_checkpoint_grid=\(4, 0\) must be"):
        task.pretrained_params(params)


def test_every_vit_config_takes_an_init_checkpoint_and_its_grid():
    from configs import distill_digits, vit_cifar10, vit_digits, vit_finetune, vit_imagenet

    for module in (vit_digits, vit_cifar10, vit_imagenet, vit_finetune, distill_digits):
        config = module.get_config()
        assert config.init_checkpoint == "", module.__name__
        config.init_checkpoint_grid = (4, 9)  # a FieldReference typed tuple: settable
        assert config.init_checkpoint_grid == (4, 9)
    assert distill_digits.get_config().distill.teacher_checkpoint_grid is None


def test_init_new_head_starts_a_zero_head_from_a_checkpoint_whose_head_fits(tmp_path):
    """``config.init_new_head``: vit_finetune.py sets it (vit_jax's zero head even from a
    checkpoint trained on as many classes); other configs keep a head that fits."""
    import pytest

    import vit
    from configs import vit_digits, vit_finetune

    task = _task()
    params = _random_params(task, _batch(task))
    path = str(tmp_path / "pretrained.npz")
    vit.save_npz(params, path)
    task.config.init_checkpoint = path
    kept = task.pretrained_params(params)
    np.testing.assert_array_equal(kept["head"]["kernel"], params["head"]["kernel"])
    task.config.init_new_head = True
    fresh = task.pretrained_params(params)
    assert not np.any(fresh["head"]["kernel"]) and not np.any(fresh["head"]["bias"])
    np.testing.assert_array_equal(fresh["cls"], params["cls"])
    task.config.init_new_head = None  # the config's type check lets None through
    with pytest.raises(ValueError, match=r"config.init_new_head=None must be True or False"):
        task.pretrained_params(params)
    assert vit_finetune.get_config("cifar10").init_new_head is True
    assert vit_digits.get_config().init_new_head is False


def test_command_line_sets_a_non_square_image_size_and_checkpoint_grid():
    """Through ml_collections' config flags, as ``trainer.main`` parses them: a fine-tuning
    resolution ``(height, width)`` and a checkpoint grid, each written ``a,b``."""
    from absl import flags
    from ml_collections import config_flags

    from tests.trainer.launcher import REPO

    argv = ["trainer.main", f"--config={REPO}/configs/vit_finetune.py:cifar10",
            "--config.model.image_size=384,640", "--config.init_checkpoint_grid=14,14"]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    assert config.model.image_size == (384, 640)
    assert config.init_checkpoint_grid == (14, 14)
    assert create_task(config).model.grid_size == (24, 40)


def test_the_deit_config_repeats_each_training_image_three_times(digits_data_dir):
    """``config.aug_repeats`` reaches the training loader (vit_imagenet.py sets DeiT's 3):
    each image three times in a row, each copy flipped or not on its own."""
    from configs import vit_imagenet

    assert vit_imagenet.get_config().aug_repeats == 3
    task = create_task(tiny_digits_config(digits_data_dir, aug_repeats=3, batch_size=30,
                                          pp_train="flip_lr|value_range(0,1)"))
    batch = next(iter(task.train_iterator(0, 1)))
    labels, images = batch["label"].reshape(10, 3), batch["image"]
    assert (labels == labels[:, :1]).all()
    copies = images.reshape(10, 3, *images.shape[1:])
    same = [np.array_equal(c[0], c[k]) or np.array_equal(c[0], c[k][:, ::-1])
            for c in copies for k in (1, 2)]
    assert all(same)  # copies of one image, up to the flip
    assert any(not np.array_equal(c[0], c[k]) for c in copies for k in (1, 2))


def test_evaluation_loss_is_unsmoothed_and_top5_includes_the_fifth_logit():
    """Evaluation sums on hand-made logits (the model replaced, so no compilation): the loss
    is the plain cross-entropy -log softmax(logits)[label] even when training smooths the
    labels, and top-5 counts a label ranked fifth (rank 4) but not one ranked sixth."""
    task = _task()
    task.config.label_smoothing = 0.1
    logits = np.tile(np.arange(10, 0, -1, dtype=np.float32), (4, 1))  # class c has rank c
    labels = np.array([4, 5, 0, 4], np.int32)
    mask = np.array([1, 1, 1, 0], np.float32)  # the last example is padding
    task.logits = lambda params, images, rng, train: params
    sums = task.eval_sums(logits, {"image": np.zeros((4, 8, 8, 1), np.float32),
                                   "label": labels, "mask": mask}, {})
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want_loss = -np.sum(log_softmax[np.arange(4), labels] * mask)
    np.testing.assert_allclose(sums["loss"], [want_loss, 3], rtol=1e-5)
    np.testing.assert_allclose(sums["top5_accuracy"], [2, 3])  # ranks 4 and 0, not 5
    np.testing.assert_allclose(sums["accuracy"], [1, 3])


def test_training_loss_is_cross_entropy_against_optax_smoothed_labels():
    """label_smoothing=0.1 over 10 classes: targets 0.9 · one-hot + 0.01 everywhere (optax's
    smooth_labels, timm's LabelSmoothingCrossEntropy), the loss the mean of -sum targets ·
    log softmax over the batch. The model is replaced by the logits themselves."""
    task = _task()
    task.config.label_smoothing = 0.1
    logits = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    labels = np.array([2, 7, 7], np.int32)
    task.logits = lambda params, images, rng, train: params
    loss, _ = task.loss(logits, {"image": np.zeros((3, 8, 8, 1), np.float32), "label": labels},
                        jax.random.key(0), {})
    targets = 0.9 * np.eye(10)[labels] + 0.01
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(loss, -np.mean(np.sum(targets * log_softmax, -1)), rtol=1e-5)
