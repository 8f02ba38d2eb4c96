"""The compiler-options A/B benchmark runs on a tiny shape, times every copy of every variant
and writes its JSON (speed is not asserted)."""

import json

import pytest

from tests.benchmarks.runner import run_benchmark


@pytest.mark.slow
def test_compiler_options_ab_times_two_copies_of_each_variant(tmp_path):
    variants = {"defaults": {},
                "no_ynn_dots": {"xla_cpu_experimental_ynn_fusion_type":
                                "LIBRARY_FUSION_TYPE_REDUCE"}}
    payload = run_benchmark(tmp_path, "compiler_options_ab", "--model=ViT-micro",
                            "--batch_size=2", "--image_size=32", "--rounds=2", "--repeats=1",
                            f"--variants={json.dumps(variants)}", timeout=300)
    rows = payload["results"]
    assert [(r["variant"], r["copy"]) for r in rows] == [
        ("defaults", "a"), ("no_ynn_dots", "a"), ("defaults", "b"), ("no_ynn_dots", "b")]
    assert rows[1]["options"] == variants["no_ynn_dots"]
    for row in rows:
        assert len(row["step_seconds_per_round"]) == 2 and row["step_seconds"] > 0
        assert row["speedup_over_defaults"] > 0
    copies_of_first = [r["step_seconds"] for r in rows if r["variant"] == "defaults"]
    # The speed-up is against the median of both copies of the first variant.
    baseline = rows[0]["step_seconds"] * rows[0]["speedup_over_defaults"]
    assert min(copies_of_first) * (1 - 1e-9) <= baseline <= max(copies_of_first) * (1 + 1e-9)


@pytest.mark.slow
def test_model_variants_are_compiled_with_the_launchers_options(tmp_path):
    from trainer import xla_cpu

    variants = {"skip_unread": {}, "every_token": {"skip_unread_tokens": False}}
    payload = run_benchmark(tmp_path, "compiler_options_ab", "--model=ViT-micro",
                            "--batch_size=2", "--image_size=32", "--rounds=1", "--repeats=1",
                            f"--model_variants={json.dumps(variants)}", timeout=300)
    rows = {(r["variant"], r["copy"]): r for r in payload["results"]}
    assert set(rows) == {(v, c) for v in variants for c in "ab"}
    for (name, _), row in rows.items():
        assert row["model_overrides"] == variants[name]
        assert row["options"] == xla_cpu.compiler_options()
    # The class-token model's last block skips most of its work: fewer FLOPs in the step.
    assert rows["skip_unread", "a"]["train_flops"] < rows["every_token", "a"]["train_flops"]
