"""Checkpoints: exact resumption, model mismatch, NaN stop, pretrained initialisation."""

import os

import jax
import numpy as np
import pytest

from tests.trainer.tiny import tiny_digits_config, tiny_seq2seq_config
from trainer.checkpointing import CheckpointMismatchError, restore_params
from trainer.metrics import read_metrics
from trainer.tasks.classification import ClassificationTask
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
    # The same command again (a requeued job): its checkpoint is at the stop; nothing trains.
    assert train_and_evaluate(config(stop_after_step=3), resumed)["step"] == 3
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
    # Fewer steps than its checkpoint has done: refused, rather than a summary past the end.
    with pytest.raises(ValueError, match=r"at step 2, past config\.num_train_steps=1"):
        train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=1,
                                              **{"schedule.warmup_steps": 0}), workdir)
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


@pytest.mark.parametrize("schedule, warmup, bad_step", [("constant", 0, 1),
                                                        ("warmup_cosine", 2, 2)])
def test_parameters_of_an_overflowing_update_are_never_checkpointed(tmp_path, digits_data_dir,
                                                                    schedule, warmup, bad_step):
    """The update of ``bad_step`` overflows while its loss (computed before the update) is
    finite. With warmup the first step's learning rate is 0, so checkpoint 1 is good and kept."""
    workdir = str(tmp_path / "run")
    config = tiny_digits_config(
        digits_data_dir, num_train_steps=6, checkpoint_every_steps=1,
        **{"optimizer.learning_rate": 1e38, "optimizer.grad_clip_norm": 0.0,
           "optimizer.name": "sgd", "optimizer.momentum": 0.0, "optimizer.weight_decay": 100.0,
           "schedule.name": schedule, "schedule.warmup_steps": warmup})
    with pytest.raises(NonFiniteLossError) as error:
        train_and_evaluate(config, workdir)
    saved = sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))
                   if name.isdigit())
    for step in saved:
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restore_params(workdir, step)))
    assert saved == list(range(1, bad_step))
    assert (f"parameters and optimizer state after the update of step {bad_step} hold"
            in str(error.value))


def _summary_evals(summary):
    return {key: summary[key] for key in ("step", "final_eval", "best_eval")}


def test_resumed_run_summary_covers_evaluations_before_the_restart(tmp_path, digits_data_dir):
    overrides = {"optimizer.learning_rate": 1.0, "optimizer.name": "adam",
                 "schedule.name": "constant", "eval_every_steps": 1}
    straight = train_and_evaluate(tiny_digits_config(digits_data_dir, **overrides),
                                  str(tmp_path / "straight"))
    # The best of the evaluations after the restart at step 3 alone must differ, else the
    # test could not tell a summary that forgets the earlier ones.
    best_after_restart = {}
    for record in read_metrics(str(tmp_path / "straight")):
        if record["step"] > 3 and "eval/loss" in record:
            for key in straight["best_eval"]:
                better = min if key.endswith("loss") else max
                best_after_restart[key] = better(best_after_restart.get(key, record[key]),
                                                 record[key])
    assert best_after_restart != straight["best_eval"]

    resumed = str(tmp_path / "resumed")
    train_and_evaluate(tiny_digits_config(digits_data_dir, stop_after_step=3, **overrides),
                       resumed)
    summary = train_and_evaluate(tiny_digits_config(digits_data_dir, **overrides), resumed)
    assert _summary_evals(summary) == _summary_evals(straight)


def test_rerunning_a_finished_run_leaves_its_files_as_they_are(tmp_path, digits_data_dir,
                                                               monkeypatch):
    workdir = str(tmp_path / "run")
    config = tiny_digits_config(digits_data_dir, num_train_steps=3)
    first = train_and_evaluate(config, workdir)
    assert first["final_eval"]

    def read(name):
        with open(os.path.join(workdir, name)) as f:
            return f.read()

    before = {name: read(name) for name in ("summary.json", "metrics.jsonl")}
    tensorboard = sorted(os.listdir(os.path.join(workdir, "tensorboard")))
    # A distillation task's compression report is written here; it must not be redone.
    ended = []
    monkeypatch.setattr(ClassificationTask, "on_train_end",
                        lambda self, *args: ended.append(args) or None)
    assert train_and_evaluate(config, workdir) == first
    assert {name: read(name) for name in before} == before
    assert sorted(os.listdir(os.path.join(workdir, "tensorboard"))) == tensorboard
    assert ended == []

    # A run that died after its last checkpoint, before its summary: the summary is rebuilt.
    os.remove(os.path.join(workdir, "summary.json"))
    rebuilt = train_and_evaluate(config, workdir)
    assert _summary_evals(rebuilt) == _summary_evals(first)
    assert len(ended) == 1 and ended[0][-1] == first["final_eval"]


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


def test_resume_with_another_optimizer_is_refused_and_keeps_every_checkpoint(tmp_path,
                                                                           digits_data_dir):
    """A resume with other optimizer settings reported every healthy checkpoint as damaged
    and ended in "none could be restored"; it must say what changed and move nothing."""
    workdir = str(tmp_path / "run")
    config = tiny_digits_config(digits_data_dir, num_train_steps=4)
    train_and_evaluate(config, workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    before = sorted(os.listdir(checkpoints))
    with pytest.raises(CheckpointMismatchError, match="different optimizer state"):
        train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=6,
                                              **{"optimizer.name": "sgd"}), workdir)
    assert sorted(os.listdir(checkpoints)) == before
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))
    # The run's own optimizer still resumes from its newest checkpoint.
    assert train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=6),
                              workdir)["step"] == 6
