"""Two processes with 4 CPU devices each (parameters sharded over both) train exactly like
one process with 8 (data parallel).

Both processes run the launcher's documented multi-host command on this machine
(coordinator on 127.0.0.1, gloo CPU collectives), each reading only its own part of every
global batch.
"""

import os
import sys

import jax
import numpy as np
import pytest

from tests.multiprocess import run_processes
from tests.trainer.launcher import REPO, run_launcher
from tests.trainer.tiny import STEP_FLAGS, TINY_VIT_FLAGS
from tests.xla_flags import xla_flags
from trainer.checkpointing import restore_params
from trainer.metrics import read_metrics


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, digits_data_dir):
    flags = (*STEP_FLAGS, *TINY_VIT_FLAGS, "--config.log_every_steps=1",
             f"--config.dataset.data_dir={digits_data_dir}")
    run_launcher("configs/vit_digits.py", str(tmp_path / "one"), *flags, devices=8)

    workdir = str(tmp_path / "two")
    # Parameters sharded over both hosts (FSDP), so that no process can read them whole: a
    # fresh run used to fetch them all to the host at start and failed there.
    fsdp = ("--config.mesh_shape.data=1", "--config.mesh_shape.fsdp=-1",
            "--config.sharding.min_fsdp_size=256")
    env = {**os.environ, "XLA_FLAGS": xla_flags(4),
           "JAX_PLATFORMS": "cpu"}
    outputs = run_processes(lambda port: [
        [sys.executable, "-m", "trainer.main", "--config=configs/vit_digits.py",
         f"--workdir={workdir}", *flags, *fsdp, f"--coordinator_address=127.0.0.1:{port}",
         "--num_processes=2", f"--process_id={index}"] for index in range(2)],
        env=env, cwd=REPO, timeout=400)
    assert "hosts=2" in outputs[0]

    one, two = read_metrics(str(tmp_path / "one")), read_metrics(workdir)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(one, two, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    assert one[-1]["eval/accuracy"] == pytest.approx(two[-1]["eval/accuracy"], abs=1e-9)
    for a, b in zip(jax.tree.leaves(restore_params(str(tmp_path / "one"))),
                    jax.tree.leaves(restore_params(workdir)), strict=True):
        # Float32 sums reduced in another order (gloo vs in-process): rounding-level gaps.
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
