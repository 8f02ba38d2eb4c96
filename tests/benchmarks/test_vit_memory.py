"""The memory benchmark: its largest-batch search against brute force, and one tiny run."""

import pytest

from benchmarks.batch_search import largest_batch
from benchmarks.step_memory import step_config, step_memory_bytes
from tests.benchmarks.runner import run_benchmark


@pytest.mark.parametrize("fixed, slope, kink", [
    (100, 10, None),      # affine: the first guess is right
    (5000, 3, None),      # a large fixed cost
    (100, 10, 200),       # steeper past batch 200: the guess overshoots
    (100, 1, 40),         # shallow then steep: found by galloping down
])
def test_largest_batch_matches_brute_force(fixed, slope, kink):
    def memory(batch):
        extra = 0 if kink is None or batch <= kink else 50 * (batch - kink)
        return fixed + slope * batch + extra

    budget = 9_000
    expected = max((b for b in range(8, 4000, 8) if memory(b) <= budget), default=0)
    got, seen = largest_batch(memory, budget, 8)
    assert got == expected
    assert len(seen) <= 24  # a search (about 2·log2 of the range), not a scan of 500
    assert largest_batch(memory, fixed + slope * 7, 8)[0] == 0


@pytest.mark.slow
def test_vit_memory_benchmark_runs(tmp_path):
    payload = run_benchmark(tmp_path, "vit_memory", "--model=ViT-micro", "--image_size=16",
                            "--batch_size=8", "--variants=remat_full", "--budget_gb=0.01",
                            "--batch_multiple=8")
    row = payload["results"][0]
    assert row["variant"] == "remat_full" and row["memory_gib"] > 0
    seen = {int(k): v for k, v in row["compiled_batches"].items()}
    budget = 0.01 * 2**30
    assert row["largest_batch"] > 0 and seen[row["largest_batch"]] <= budget
    assert seen[row["largest_batch"] + 8] > budget


def test_remat_under_scan_layers_saves_memory():
    # Without scan_layers XLA:CPU keeps the activations live despite remat (the docstring of
    # benchmarks/vit_memory.py); under nn.scan the recomputation stays in the backward loop's
    # body.
    scan, scan_remat = (step_memory_bytes(step_config("ViT-micro", 16, variant), batch_size=32)
                        for variant in ("scan", "scan_remat_full"))
    assert scan_remat < 0.8 * scan
