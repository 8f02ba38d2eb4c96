"""Gradient accumulation over micro-batches equals one step on the whole batch."""

import jax
import numpy as np
import pytest

from tests.trainer.tiny import tiny_digits_config
from trainer.optimizers import make_optimizer
from trainer.steps import init_state, make_train_step
from trainer.tasks import create_task


@pytest.mark.slow
def test_accumulated_step_matches_full_batch_step(digits_data_dir):
    config = tiny_digits_config(digits_data_dir)
    task = create_task(config)
    tx, schedule = make_optimizer(config, config.num_train_steps)
    batch = next(iter(task.train_iterator(0, 1)))
    state = init_state(task, tx, 0, batch)
    full_state, full_metrics = jax.jit(make_train_step(task, tx, schedule, 1))(state, batch, {})
    accum_state, accum_metrics = jax.jit(make_train_step(task, tx, schedule, 4))(
        state, batch, {})
    np.testing.assert_allclose(full_metrics["loss"], accum_metrics["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(full_state.params), jax.tree.leaves(accum_state.params),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
