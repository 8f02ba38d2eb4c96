"""The decoding benchmark runs on a tiny shape and writes its JSON (speed is not asserted)."""

import json
import subprocess
import sys

from tests.trainer.launcher import REPO


def test_decoding_benchmark_runs(tmp_path):
    out = tmp_path / "decoding.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.decoding", "--configs=micro", "--lengths=4,8",
         "--batch_size=2", "--source_length=6", "--vocab_size=32", "--repeats=1",
         f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    variants = {(r["strategy"], r["variant"], r["length"]) for r in payload["results"]}
    assert ("greedy", "no cache", 8) in variants and ("beam", "cache", 4) in variants
    assert all(r["tokens_per_sec"] > 0 for r in payload["results"])
    assert {s["variant"] for s in payload["scaling"]} == {"cache", "no cache"}
