"""A run killed with SIGKILL at a random step and restarted with the same command ends exactly
like an uninterrupted one: bitwise parameters, the same metrics, no step logged twice."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.trainer.launcher import REPO
from tests.trainer.tiny import TINY_VIT_FLAGS
from tests.xla_flags import xla_flags
from trainer.checkpointing import restore_params
from trainer.metrics import read_metrics

STEPS = 14


def _command(workdir, data_dir):
    return [sys.executable, "-m", "trainer.main", "--config=configs/vit_digits.py",
            f"--workdir={workdir}", *TINY_VIT_FLAGS, f"--config.dataset.data_dir={data_dir}",
            f"--config.num_train_steps={STEPS}", "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=3", "--config.eval_every_steps=7",
            "--config.batch_size=32", "--config.eval_batch_size=64",
            "--config.schedule.warmup_steps=2", "--config.progress_bar=False"]


ENV = {**os.environ, "XLA_FLAGS": xla_flags(2)}


def _without_timing(records):
    timing = ("train/examples_per_sec", "train/mfu")
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


@pytest.mark.slow
@pytest.mark.parametrize("draw", range(2))
def test_sigkill_at_a_random_step_then_restart(tmp_path, digits_data_dir, draw):
    kill_after = random.Random().randint(2, STEPS - 2)  # a different step on every test run
    straight = str(tmp_path / "straight")
    subprocess.run(_command(straight, digits_data_dir), cwd=REPO, env=ENV, check=True,
                   capture_output=True, timeout=300)

    workdir = str(tmp_path / "killed")
    process = subprocess.Popen(_command(workdir, digits_data_dir), cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(read_metrics(workdir)) < kill_after:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"run ended before the kill at {kill_after}"

    resumed = subprocess.run(_command(workdir, digits_data_dir), cwd=REPO, env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for a, b in zip(jax.tree.leaves(restore_params(straight)),
                    jax.tree.leaves(restore_params(workdir)), strict=True):
        np.testing.assert_array_equal(a, b)
    killed_metrics = read_metrics(workdir)
    assert [r["step"] for r in killed_metrics] == list(range(1, STEPS + 1))
    assert _without_timing(killed_metrics) == _without_timing(read_metrics(straight)), (
        f"killed after step {kill_after}")
