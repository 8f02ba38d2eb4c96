"""``config.ema_decay``: the moving average of the parameters (timm's and DeiT's model EMA)
in the train step, the checkpoints and the evaluations."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.trainer.tiny import tiny_digits_config
from trainer.checkpointing import (
    Checkpointer,
    CheckpointMismatchError,
    MissingAverageError,
    params_fingerprint,
    restore_params,
)
from trainer.metrics import read_metrics
from trainer.steps import TrainState, init_state, make_train_step
from trainer.train import train_and_evaluate


class _QuadraticTask:
    """loss = |w - x|²: plain SGD moves w a known way, so the average can be followed."""

    def init_params(self, rng, batch):
        return {"w": jnp.asarray([1.0, -2.0, 0.5])}

    def loss(self, params, batch, rng, frozen):
        return jnp.sum((params["w"] - batch["x"]) ** 2), {}

    def loss_weight(self, batch):
        return jnp.float32(1)


def test_the_average_follows_each_update_with_the_decay_given():
    """After each update ema = d·ema + (1 - d)·params, from ema = the initial parameters
    (checked against that formula applied by hand to the parameters of every step)."""
    task, tx, decay = _QuadraticTask(), optax.sgd(0.1), 0.75
    step = jax.jit(make_train_step(task, tx, optax.constant_schedule(0.1), ema_decay=decay))
    state = init_state(task, tx, 0, None, ema=True)
    expected = np.asarray(state.params["w"], np.float64)
    np.testing.assert_array_equal(state.ema_params["w"], state.params["w"])
    for x in ([0.0, 0.0, 0.0], [3.0, 1.0, -1.0], [2.0, 2.0, 2.0]):
        state, _ = step(state, {"x": jnp.asarray(x)}, {})
        expected = decay * expected + (1 - decay) * np.asarray(state.params["w"], np.float64)
        np.testing.assert_allclose(state.ema_params["w"], expected, rtol=1e-6)
    # The parameters themselves are those of plain SGD: the average does not feed back.
    plain = jax.jit(make_train_step(task, tx, optax.constant_schedule(0.1)))
    other = init_state(task, tx, 0, None)
    for x in ([0.0, 0.0, 0.0], [3.0, 1.0, -1.0], [2.0, 2.0, 2.0]):
        other, _ = plain(other, {"x": jnp.asarray(x)}, {})
    assert other.ema_params is None
    np.testing.assert_array_equal(other.params["w"], state.params["w"])


def test_turning_the_average_on_at_a_resume_is_refused_and_moves_nothing(tmp_path):
    """A checkpoint without an average read into a state with one: orbax's structure error
    would have been taken for damage and the checkpoint moved aside; the fingerprint says
    what differs first."""
    import grain

    tx = optax.adam(1e-3)
    params = {"dense": {"kernel": np.ones((2, 3), np.float32)}}
    state = TrainState(step=np.int32(2), params=params, opt_state=tx.init(params),
                       rng=np.zeros(2, np.uint32))
    fingerprint = {"params_fingerprint": params_fingerprint(params)}
    workdir = str(tmp_path / "run")
    checkpointer = Checkpointer(workdir, async_save=False)
    checkpointer.save(2, state, iter(grain.MapDataset.range(4).to_iter_dataset()), fingerprint)
    with_average = jax.eval_shape(lambda: state.replace(ema_params=params))
    with pytest.raises(CheckpointMismatchError, match=r"ema_params/dense/kernel.*ema_decay"):
        checkpointer.restore_latest(with_average, iter(grain.MapDataset.range(4)
                                                       .to_iter_dataset()),
                                    fingerprint["params_fingerprint"])
    checkpointer.close()
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    with pytest.raises(MissingAverageError, match="config.ema_decay=0"):
        restore_params(workdir, ema=True)


@pytest.mark.slow
def test_a_run_with_an_average_checkpoints_resumes_and_evaluates_it(tmp_path, digits_data_dir):
    """A tiny ViT run stopped at step 2 and resumed to 4: the checkpointed average is the
    formula applied to the checkpointed parameters of steps 0 (the seed's initialisation),
    1, 2, 3 and 4 across the restart, and ``eval_ema/*`` is the evaluation of it."""
    from trainer import partitioning
    from trainer.optimizers import make_optimizer
    from trainer.steps import make_eval_step
    from trainer.tasks import create_task
    from trainer.train import evaluate

    decay = 0.5
    overrides = dict(num_train_steps=4, checkpoint_every_steps=1, keep_checkpoints=4,
                     eval_every_steps=2, ema_decay=decay)
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_digits_config(digits_data_dir, stop_after_step=2, **overrides),
                       workdir)
    config = tiny_digits_config(digits_data_dir, **overrides)
    summary = train_and_evaluate(config, workdir)
    task = create_task(config)
    tx, _ = make_optimizer(config, 4)
    initial = jax.jit(lambda: init_state(task, tx, config.seed, task.dummy_batch(8)))().params
    expected = jax.tree.map(lambda x: np.asarray(x, np.float64), initial)
    for step in (1, 2, 3, 4):
        params = restore_params(workdir, step)
        expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, expected, params)
    average = restore_params(workdir, 4, ema=True)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7),
                 average, expected)
    # Logged at both evaluations, kept in the summary, and equal to evaluating the average.
    records = [r for r in read_metrics(workdir) if "eval_ema/loss" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert summary["final_eval_ema"] == {k: v for k, v in records[-1].items()
                                         if k.startswith("eval_ema/")}
    evaluated = evaluate(task, jax.jit(make_eval_step(task)), average, task.frozen_variables(),
                         partitioning.make_mesh(dict(config.mesh_shape)), 0, 1)
    for key, value in evaluated.items():
        assert summary["final_eval_ema"]["eval_ema/" + key.removeprefix("eval/")] == (
            pytest.approx(value, rel=1e-5))
    assert summary["final_eval_ema"]["eval_ema/loss"] != pytest.approx(
        summary["final_eval"]["eval/loss"])
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["final_eval_ema"] == summary["final_eval_ema"]
