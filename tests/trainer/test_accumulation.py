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
from trainer.steps import TrainState, _split_micro_batches, init_state, make_train_step
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


def _full_and_accumulated(task, tx, schedule, state, batch, frozen=None):
    """``((update, metrics) of one step on the batch, the same with ACCUM_STEPS micro-batches)``."""
    results = []
    for accum_steps in (1, ACCUM_STEPS):
        step = jax.jit(make_train_step(task, tx, schedule, accum_steps))
        new, metrics = step(state, batch, {} if frozen is None else frozen)
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


class _TwoTermRegression(_MaskedRegression):
    """The masked mean above (reported as ``masked``) plus a mean over examples of the
    unmasked error, which ``loss_weight`` does not name: like sentence distillation's loss,
    terms averaged over different counts."""

    def loss(self, params, batch, rng, frozen):
        errors = (batch["x"] * params["w"] - batch["y"]) ** 2
        masked = jnp.sum(errors * batch["mask"]) / jnp.sum(batch["mask"])
        unmasked = jnp.mean(jnp.sum(errors, axis=1))
        return masked + 0.5 * unmasked, {"masked": masked}

    def loss_weight(self, batch):
        return {"masked": jnp.sum(batch["mask"])}


def test_named_loss_terms_are_weighted_by_their_own_counts_the_rest_by_examples():
    """Fast and model-free: one term is a mean over a varying number of entries per
    micro-batch (named by ``loss_weight``), the rest of the loss a mean over examples."""
    rng = np.random.default_rng(0)
    mask = np.zeros((8, 3), np.float32)
    mask[0::ACCUM_STEPS] = 1.0
    mask[:, 0] = 1.0
    batch = {"x": rng.normal(size=(8, 3)).astype(np.float32),
             "y": rng.normal(size=(8, 3)).astype(np.float32), "mask": mask}
    tx = optax.sgd(1.0)
    (full, full_metrics), (accum, accum_metrics) = _full_and_accumulated(
        _TwoTermRegression(), tx, optax.constant_schedule(1.0), _regression_state(tx), batch)
    assert _relative_difference(accum, full) < 1e-5
    for name in ("loss", "masked"):
        np.testing.assert_allclose(accum_metrics[name], full_metrics[name], rtol=1e-6)


def _regression_state(tx):
    params = {"w": jnp.ones((3,), jnp.float32)}
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=jax.random.key_data(jax.random.key(0)))


def test_micro_batch_i_takes_rows_i_plus_multiples_of_accum_steps():
    """Rows i, i + accum_steps, ...: with the batch split over devices in contiguous blocks,
    each device's rows stay on it (contiguous micro-batches would move rows between devices;
    the accumulated update would be the same, so the update tests cannot tell)."""
    split = _split_micro_batches({"x": np.arange(8), "y": np.arange(16).reshape(8, 2)}, 4)
    np.testing.assert_array_equal(split["x"], [[0, 4], [1, 5], [2, 6], [3, 7]])
    np.testing.assert_array_equal(split["y"][1], [[2, 3], [10, 11]])


class _SignedDraw(_MaskedRegression):
    """Also reports ``sign · uniform(rng)``, ``sign`` the micro-batch's first ``sign`` entry."""

    def loss(self, params, batch, rng, frozen):
        loss, _ = super().loss(params, batch, rng, frozen)
        return loss, {"draw": batch["sign"][0] * jax.random.uniform(rng)}


def test_each_micro_batch_draws_its_own_randomness():
    """Micro-batches 0 and 2 report +uniform(rng), 1 and 3 -uniform(rng): with one key shared
    by all four (the same dropout masks and mixup ratios in every micro-batch) the averaged
    draw would be exactly 0."""
    batch = {"x": np.ones((8, 3), np.float32), "y": np.zeros((8, 3), np.float32),
             "mask": np.ones((8, 3), np.float32),
             "sign": np.tile(np.array([1, -1], np.float32), 4)}  # row i: micro-batch i % 4
    tx = optax.sgd(1.0)
    step = jax.jit(make_train_step(_SignedDraw(), tx, optax.constant_schedule(1.0), ACCUM_STEPS))
    _, metrics = step(_regression_state(tx), batch, {})
    assert abs(float(metrics["draw"])) > 1e-3, metrics["draw"]


def test_the_logged_learning_rate_is_the_one_the_step_applies():
    """A warmup 0, 0.25, 0.5, ...: step 0 logs 0 and leaves the parameters, step 1 logs 0.25
    and moves them by -0.25 · gradient (the schedule at the step's own index, not the next)."""
    schedule = optax.linear_schedule(0.0, 1.0, 4)
    tx = optax.sgd(schedule)
    task = _MaskedRegression()
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(4, 3)).astype(np.float32),
             "y": rng.normal(size=(4, 3)).astype(np.float32), "mask": np.ones((4, 3), np.float32)}
    step = jax.jit(make_train_step(task, tx, schedule))
    state = _regression_state(tx)
    grads = jax.grad(lambda p: task.loss(p, batch, None, {})[0])(state.params)
    first, metrics = step(state, batch, {})
    assert float(metrics["learning_rate"]) == 0.0
    np.testing.assert_array_equal(first.params["w"], state.params["w"])
    second, metrics = step(first, batch, {})
    assert float(metrics["learning_rate"]) == 0.25
    np.testing.assert_allclose(second.params["w"] - first.params["w"], -0.25 * grads["w"],
                               rtol=1e-5)
