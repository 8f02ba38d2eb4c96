"""Checkpoints: exact resumption, model mismatch, NaN stop, pretrained initialisation."""

import jax
import numpy as np
import pytest

from tests.trainer.tiny import tiny_digits_config, tiny_seq2seq_config
from trainer.checkpointing import CheckpointMismatchError, restore_params
from trainer.metrics import read_metrics
from trainer.train import NonFiniteLossError, train_and_evaluate

# Out of the quick subset: every test here trains through the launcher's loop.
pytestmark = pytest.mark.slow


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("make_config", ["classification", "seq2seq"])
def test_stop_and_resume_equals_uninterrupted(tmp_path, digits_data_dir, make_config):
    def config(**overrides):
        if make_config == "classification":
            return tiny_digits_config(digits_data_dir, **overrides)
        return tiny_seq2seq_config(checkpoint_every_steps=2, num_train_steps=6, **overrides)

    straight = str(tmp_path / "straight")
    train_and_evaluate(config(), straight)

    resumed = str(tmp_path / "resumed")
    train_and_evaluate(config(stop_after_step=3), resumed)
    assert max(r["step"] for r in read_metrics(resumed)) <= 3
    summary = train_and_evaluate(config(), resumed)
    assert summary["step"] == config().num_train_steps

    _assert_trees_equal(restore_params(straight), restore_params(resumed))
    # Same metrics, no step logged twice or skipped.
    steps = [r["step"] for r in read_metrics(resumed)]
    assert steps == sorted(set(steps)) == [r["step"] for r in read_metrics(straight)]
    np.testing.assert_array_equal(
        [r["train/loss"] for r in read_metrics(resumed)],
        [r["train/loss"] for r in read_metrics(straight)])


def test_workdir_of_another_model_is_refused(tmp_path, digits_data_dir):
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=2,
                                          **{"schedule.warmup_steps": 1}), workdir)
    wider = tiny_digits_config(digits_data_dir, num_train_steps=4, **{"model.hidden_size": 64})
    with pytest.raises(CheckpointMismatchError, match="different model"):
        train_and_evaluate(wider, workdir)


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, digits_data_dir):
    workdir = str(tmp_path / "run")
    config = tiny_digits_config(
        digits_data_dir, num_train_steps=6, checkpoint_every_steps=1,
        **{"optimizer.learning_rate": 1e30, "optimizer.grad_clip_norm": 0.0,
           "optimizer.name": "sgd", "optimizer.momentum": 0.0, "schedule.name": "constant"})
    with pytest.raises(NonFiniteLossError, match=r"at step \d+") as error:
        train_and_evaluate(config, workdir)
    bad_step = int(str(error.value).split("at step ")[1].split(";")[0])
    params = restore_params(workdir)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))
    assert max(r["step"] for r in read_metrics(workdir)) < bad_step


def test_second_run_on_a_busy_workdir_is_refused(tmp_path, digits_data_dir):
    from trainer.workdir_lock import WorkdirLock, WorkdirLockedError

    workdir = str(tmp_path / "run")
    import os

    os.makedirs(workdir)
    with WorkdirLock(workdir):  # stands for a run in progress
        with pytest.raises(WorkdirLockedError, match="in use by pid"):
            train_and_evaluate(tiny_digits_config(digits_data_dir), workdir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=3), workdir)


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, digits_data_dir,
                                                                   caplog):
    import logging
    import os

    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=4), workdir)
    # Corrupt every file of the newest checkpoint's state (a disk error, a torn copy).
    state_dir = os.path.join(workdir, "checkpoints", "4", "state")
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        summary = train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=6),
                                     workdir)
    assert summary["step"] == 6
    assert "checkpoints/4" in caplog.text and "older" in caplog.text
