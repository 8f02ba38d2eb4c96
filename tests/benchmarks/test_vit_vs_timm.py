"""The timm side-by-side benchmark: PyTorch stays optional, and the comparison runs on a tiny
shape where PyTorch and timm are installed (``make bench-torch``; skipped otherwise)."""

import ast
import importlib.util
import pathlib
import subprocess
import sys

import pytest

from tests.benchmarks.runner import run_benchmark
from tests.trainer.launcher import REPO

# The only files that may import PyTorch or timm: the side-by-side benchmark, and the scripts
# that regenerate reference outputs from the original PyTorch models.
ALLOWED = {"benchmarks/vit_vs_timm.py", "tests/fixtures/bert/regenerate.py",
           "tests/fixtures/randaugment/regenerate.py"}


def _imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_nothing_else_imports_torch_or_timm():
    root = pathlib.Path(REPO)
    offenders = []
    for path in root.rglob("*.py"):
        relative = path.relative_to(root).as_posix()
        if relative.startswith((".venv", "build/", "workdirs/")) or relative in ALLOWED:
            continue
        if _imported_modules(path) & {"torch", "timm", "torchvision"}:
            offenders.append(relative)
    assert not offenders, f"PyTorch/timm imported outside the bench-torch extra: {offenders}"


def test_importing_the_benchmark_does_not_import_torch():
    code = ("import sys, benchmarks.vit_vs_timm; "
            "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="needs the bench-torch "
                    "extra (make bench-torch)")
def test_side_by_side_runs_on_a_tiny_shape(tmp_path):
    payload = run_benchmark(tmp_path, "vit_vs_timm", "--models=ViT-Ti_16", "--batch_size=2",
                            "--image_size=32", "--rounds=2", "--repeats=1")
    row = payload["results"][0]
    assert row["ours_examples_per_sec"] > 0 and row["timm_examples_per_sec"] > 0
    assert row["ratio_ours_over_timm"] == pytest.approx(
        row["ours_examples_per_sec"] / row["timm_examples_per_sec"], rel=1e-9)
    assert len(row["ours_step_ms_per_round"]) == len(row["timm_step_ms_per_round"]) == 2
