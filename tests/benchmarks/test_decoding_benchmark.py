"""The decoding benchmark runs on a tiny shape and writes its JSON (speed is not asserted)."""

import pytest

from tests.benchmarks.runner import run_benchmark


@pytest.mark.slow
def test_decoding_benchmark_runs(tmp_path):
    payload = run_benchmark(tmp_path, "decoding", "--configs=micro", "--lengths=4,8",
                            "--batch_size=2", "--source_length=6", "--vocab_size=32",
                            "--repeats=1", timeout=300)
    variants = {(r["strategy"], r["variant"], r["length"]) for r in payload["results"]}
    assert ("greedy", "no cache", 8) in variants and ("beam", "cache", 4) in variants
    assert all(r["tokens_per_sec"] > 0 for r in payload["results"])
    assert {s["variant"] for s in payload["scaling"]} == {"cache", "no cache"}
