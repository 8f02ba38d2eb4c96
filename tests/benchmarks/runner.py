"""Runs a benchmark module as a user would and returns the JSON it wrote."""

import json
import subprocess
import sys

from tests.trainer.launcher import REPO


def run_benchmark(tmp_path, module: str, *flags: str, timeout: int = 600) -> dict:
    """``python -m benchmarks.<module> <flags> --out=<tmp>``; fails with its stderr."""
    out = tmp_path / f"{module}.json"
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *flags,
                             f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())
