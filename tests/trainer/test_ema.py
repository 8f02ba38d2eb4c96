"""``config.ema_decay``: the moving average of the parameters (timm's and DeiT's model EMA)
in the train step and the checkpoints. A run with one, resumed and evaluated, is in
``test_evaluate.py`` (which evaluates its checkpoints)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trainer.checkpointing import (
    Checkpointer,
    CheckpointMismatchError,
    MissingAverageError,
    params_fingerprint,
    restore_params,
)
from trainer.steps import TrainState, init_state, make_train_step


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


def test_a_pretrained_start_gives_the_average_the_same_values_in_its_own_buffers():
    """``config.init_checkpoint`` with ``ema_decay``: the average starts at the pretrained
    parameters, and a donating step accepts the state (with both fields holding one buffer
    it fails: "Attempt to donate the same buffer twice")."""
    from trainer import partitioning
    from trainer.train import _pretrained_state

    task, tx = _QuadraticTask(), optax.adam(1e-3)
    mesh = partitioning.make_mesh({"data": -1, "fsdp": 1})
    state = init_state(task, tx, 0, None, ema=True)
    shardings = partitioning.state_shardings(jax.eval_shape(lambda: state), mesh, 2**20)
    state = jax.device_put(state, shardings)
    pretrained = {"w": np.asarray([3.0, 4.0, 5.0], np.float32)}
    started = _pretrained_state(state, pretrained, tx, shardings,
                                params_fingerprint(state.params))
    np.testing.assert_array_equal(started.params["w"], pretrained["w"])
    np.testing.assert_array_equal(started.ema_params["w"], pretrained["w"])
    step = jax.jit(make_train_step(task, tx, optax.constant_schedule(1e-3), ema_decay=0.9),
                   donate_argnums=(0,))
    after, _ = step(started, {"x": jnp.zeros(3)}, {})
    np.testing.assert_allclose(after.ema_params["w"],
                               0.9 * pretrained["w"] + 0.1 * np.asarray(after.params["w"]),
                               rtol=1e-6)
