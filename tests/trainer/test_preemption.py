"""SIGTERM (preemption) saves a checkpoint before exiting; the same command then resumes."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.trainer.launcher import REPO
from tests.trainer.tiny import TINY_VIT_FLAGS
from tests.xla_flags import xla_flags
from trainer.metrics import read_metrics


@pytest.mark.slow
def test_sigterm_saves_then_restart_resumes(tmp_path, digits_data_dir):
    workdir = str(tmp_path / "run")
    base = [sys.executable, "-m", "trainer.main", "--config=configs/vit_digits.py",
            f"--workdir={workdir}", *TINY_VIT_FLAGS,
            f"--config.dataset.data_dir={digits_data_dir}", "--config.log_every_steps=1",
            "--config.batch_size=32", "--config.progress_bar=False",
            "--config.checkpoint_every_steps=100000", "--config.eval_every_steps=100000"]
    command = [*base, "--config.num_train_steps=100000"]
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and len(read_metrics(workdir)) < 3:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.5)
    assert os.path.exists(metrics_path), "training never logged a step"
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "preempted: saved the checkpoint at step" in output
    saved_step = int(output.split("saved the checkpoint at step ")[1].split(";")[0])
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(saved_step)]
    assert max(r["step"] for r in read_metrics(workdir)) <= saved_step

    # The same command resumes (a shorter run here, so the test ends soon).
    resumed = subprocess.run(
        [*base, f"--config.num_train_steps={saved_step + 2}",
         "--config.schedule.warmup_steps=1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from the checkpoint at step {saved_step}" in resumed.stdout
    assert max(r["step"] for r in read_metrics(workdir)) == saved_step + 2


@pytest.mark.slow  # trains through the launcher's loop
def test_a_preempted_step_is_saved_before_it_is_evaluated(tmp_path, digits_data_dir,
                                                          monkeypatch):
    """SIGTERM at a step that also evaluates: the checkpoint is written first, since the
    grace period may end during a long evaluation (BLEU decoding); the evaluation then still
    runs and is logged, and the run stops there."""
    from tests.trainer.tiny import tiny_digits_config
    from trainer import checkpointing, train

    events = []
    calls = iter(range(10**6))
    monkeypatch.setattr(train._PreemptionFlag, "anywhere",
                        lambda self: next(calls) >= 2)  # asked at step 3, an eval step
    real_save, real_evaluate = checkpointing.Checkpointer.save, train.evaluate

    def save(self, step, *args):
        events.append(("save", step))
        return real_save(self, step, *args)

    def evaluate(*args):
        events.append(("evaluate",))
        return real_evaluate(*args)

    monkeypatch.setattr(checkpointing.Checkpointer, "save", save)
    monkeypatch.setattr(train, "evaluate", evaluate)
    workdir = str(tmp_path / "run")
    config = tiny_digits_config(digits_data_dir, checkpoint_every_steps=100,
                                async_checkpoints=True)
    assert train.train_and_evaluate(config, workdir)["step"] == 3
    assert events == [("save", 3), ("evaluate",)]
    assert "eval/loss" in read_metrics(workdir)[-1]
