"""The decoding benchmark runs on a tiny shape and writes its JSON (speed is not asserted)."""

import pytest

from benchmarks.report import decoding_section
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
    # The file names its own run: the report rebuilds this command from it, not another's.
    assert payload["command_flags"]["lengths"] == ["4", "8"]
    assert decoding_section("decoding_micro", payload).splitlines()[2] == (
        "Command: `python -m benchmarks.decoding --configs=micro --lengths=4,8 "
        "--strategies=greedy,beam --batch_size=2 --source_length=6 --vocab_size=32 "
        "--repeats=1 --no_cache --out=benchmarks/results/decoding_micro.json`  ")
    # Its decoders are jitted with XLA's defaults, not the launcher's options.
    assert payload["environment"]["xla_compiler_options"] == {}
