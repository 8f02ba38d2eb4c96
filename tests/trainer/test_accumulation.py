"""Gradient accumulation over micro-batches equals one step on the whole batch.

Each case compares *updates* (new minus old parameters) of plain SGD with a constant learning
rate, so the update is −lr · gradient from the very first step: an accumulated gradient that is
wrongly scaled or wrongly weighted shows up in the comparison (a warmup schedule starting at
lr 0 would leave both steps' parameters unchanged, and equal).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.trainer.tiny import tiny_digits_config, tiny_seq2seq_config
from trainer.optimizers import make_optimizer
from trainer.steps import TrainState, init_state, make_train_step
from trainer.tasks import create_task
from trainer.tasks.base import Task

ACCUM_STEPS = 4


def _plain_sgd(config):
    """Update = −1.0 · gradient: constant lr, no momentum, weight decay or clipping, and no
    mixup (its random mixing is drawn per micro-batch, so it differs from the full batch's)."""
    config.schedule.update(dict(name="constant", warmup_steps=0))
    config.optimizer.update(dict(name="sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.0,
                                 grad_clip_norm=0.0))
    if "mixup" in config:
        config.mixup.update(dict(mixup_alpha=0.0, cutmix_alpha=0.0))
    return config


def _relative_difference(a, b) -> float:
    """``‖a − b‖ / ‖b‖`` over whole parameter trees."""
    return float(optax.tree.norm(jax.tree.map(jnp.subtract, a, b)) / optax.tree.norm(b))


def _full_and_accumulated(task, tx, schedule, state, batch):
    """``((update, metrics) of one step on the batch, the same with ACCUM_STEPS micro-batches)``."""
    results = []
    for accum_steps in (1, ACCUM_STEPS):
        new, metrics = jax.jit(make_train_step(task, tx, schedule, accum_steps))(state, batch, {})
        results.append((jax.tree.map(jnp.subtract, new.params, state.params), metrics))
    return results


def _check_accumulated_equals_full(config, batch_check=None):
    task = create_task(config)
    tx, schedule = make_optimizer(config, config.num_train_steps)
    assert float(schedule(0)) == 1.0
    batch = next(iter(task.train_iterator(0, 1)))
    if batch_check is not None:
        batch_check(batch)
    state = init_state(task, tx, 0, batch)
    (full, full_metrics), (accum, accum_metrics) = _full_and_accumulated(
        task, tx, schedule, state, batch)
    assert float(optax.tree.norm(full)) > 1e-2, "the step did not move the parameters"
    assert _relative_difference(accum, full) < 1e-4
    for name, value in full_metrics.items():
        np.testing.assert_allclose(accum_metrics[name], value, rtol=1e-5, err_msg=name)


@pytest.mark.slow
def test_accumulated_step_matches_full_batch_step(digits_data_dir):
    _check_accumulated_equals_full(_plain_sgd(tiny_digits_config(digits_data_dir)))


@pytest.mark.slow
def test_seq2seq_accumulation_weighs_micro_batches_by_their_tokens():
    """The loss is a mean over non-padding target tokens, and the micro-batches hold different
    numbers of them: an unweighted mean of micro-batch means is off by ~6% here."""
    config = _plain_sgd(tiny_seq2seq_config())

    def has_uneven_micro_batches(batch):
        tokens = (np.asarray(batch["targets"]) > 0).reshape(-1, ACCUM_STEPS).sum(axis=0)
        assert len(set(tokens.tolist())) > 1, tokens  # else any weighting would pass

    _check_accumulated_equals_full(config, has_uneven_micro_batches)


class _MaskedRegression(Task):
    """Squared error of ``w · x`` against ``y`` (``[batch, 3]``), averaged over the entries
    where ``mask`` is 1: like seq2seq's loss, a mean over entries rather than examples."""

    def __init__(self) -> None:
        super().__init__(config=None)

    def loss(self, params, batch, rng, frozen):
        errors = (batch["x"] * params["w"] - batch["y"]) ** 2 * batch["mask"]
        return jnp.sum(errors) / self.loss_weight(batch), {}

    def loss_weight(self, batch):
        return jnp.sum(batch["mask"])


def test_micro_batches_are_weighted_by_loss_weight():
    """Fast and model-free: the accumulated step of a loss averaged over a varying number of
    entries per micro-batch equals the full-batch step."""
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 3), np.float32)
    mask[0::ACCUM_STEPS] = 1.0  # micro-batch 0 (rows 0 and 4) has all entries, the others one
    mask[:, 0] = 1.0
    batch = {"x": rng.normal(size=(8, 3)).astype(np.float32),
             "y": rng.normal(size=(8, 3)).astype(np.float32), "mask": mask}
    task, tx = _MaskedRegression(), optax.sgd(1.0)
    params = {"w": jnp.ones((3,), jnp.float32)}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))
    (full, full_metrics), (accum, accum_metrics) = _full_and_accumulated(
        task, tx, optax.constant_schedule(1.0), state, batch)
    assert float(optax.tree.norm(full)) > 1e-2
    assert _relative_difference(accum, full) < 1e-5
    np.testing.assert_allclose(accum_metrics["loss"], full_metrics["loss"], rtol=1e-6)
