"""The step's count of NaN/Inf values covers the optimizer state, not only the parameters."""

import jax
import jax.numpy as jnp
import optax
import pytest

from trainer.steps import init_state, make_train_step
from trainer.train import NonFiniteLossError, _host_scalars


class _LinearTask:
    """loss = 1e10 · w·x: the gradient is 1e10 · x."""

    def init_params(self, rng, batch):
        return {"w": jnp.full((4,), 0.5)}

    def loss(self, params, batch, rng, frozen):
        return jnp.sum(params["w"] * batch["x"]) * 1e10, {}

    def loss_weight(self, batch):
        return jnp.float32(1)


def test_an_overflowing_adam_moment_is_caught_although_the_parameters_are_finite():
    """Gradients of 1e20 are finite but their squares are not: Adam's second moment becomes
    inf, its update mu/sqrt(inf) is 0, so the parameters stay finite and would never move
    again; such a state must not pass the check made before every checkpoint."""
    task, tx = _LinearTask(), optax.adam(1e-3)
    step = jax.jit(make_train_step(task, tx, optax.constant_schedule(1e-3)))
    state = init_state(task, tx, 0, None)
    state, metrics = step(state, {"x": jnp.full((4,), 1e10, jnp.float32)}, {})
    assert bool(jnp.all(jnp.isfinite(state.params["w"]))) and jnp.isfinite(metrics["loss"])
    assert int(metrics["nonfinite_state"]) == 4  # the four entries of Adam's nu
    with pytest.raises(NonFiniteLossError, match="optimizer state after the update of step 1 "
                                                 "hold 4 NaN/Inf values"):
        _host_scalars([metrics], 0)


def test_a_healthy_step_counts_nothing():
    task, tx = _LinearTask(), optax.adam(1e-3)
    step = jax.jit(make_train_step(task, tx, optax.constant_schedule(1e-3)))
    state, metrics = step(init_state(task, tx, 0, None), {"x": jnp.ones((4,))}, {})
    assert int(metrics["nonfinite_state"]) == 0
    assert "train/nonfinite_state" not in _host_scalars([metrics], 0)
