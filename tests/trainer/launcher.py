"""Runs ``python -m trainer.main`` in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.xla_flags import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_launcher(config: str, workdir: str, *overrides: str, devices: int = 8,
                 timeout: int = 300, check: bool = True, extra_args: tuple[str, ...] = (),
                 fast_compile: bool = True):
    """Returns the CompletedProcess; raises with the output when ``check`` and it failed.
    ``fast_compile=False``: XLA's default optimisation, as a user runs it
    (tests/xla_flags.py)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags(devices, fast_compile)
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, "-m", "trainer.main", f"--config={config}",
               f"--workdir={workdir}", *overrides, *extra_args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"launcher failed ({result.returncode}): {' '.join(command)}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-8000:]}")
    return result
