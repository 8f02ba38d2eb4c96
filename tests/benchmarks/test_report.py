"""benchmarks.report renders each result file from what that file records: the command from its
saved flags, the compiler options its steps were compiled with; benchmarks.common's table and
environment as the benchmarks use them."""

import json
import os

from benchmarks import report
from benchmarks.common import environment, table
from trainer import xla_cpu

LAUNCHER = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
ENV = {"date": "2026-12-01", "jax": "0.10.2", "backend": "cpu", "device_kind": "cpu",
       "device_count": 1, "cpu_count": 2, "machine": "x86_64", "glibc_tunables": ""}


def _decoding_payload(**extra):
    rows = [{"config": "base", "strategy": "greedy", "variant": "cache", "length": length,
             "seconds": 1.0, "tokens_per_sec": 64.0, "ms_per_token_step": 1.0}
            for length in (128, 256)]
    return {"environment": ENV, "batch_size": 64, "source_length": 32, "results": rows,
            "scaling": [{"config": "base", "strategy": "greedy", "variant": "cache",
                         "lengths": "128->256", "per_step_time_ratio": 1.0}], **extra}


def _command_line(section: str) -> str:
    return section.splitlines()[2]


def test_table_of_no_rows_is_its_header():
    # vit_profile --top=0 asks for a table of no ops.
    assert table([], ["kind", "op_seconds"]) == "kind  op_seconds\n----  ----------"


def test_decoding_command_is_rebuilt_from_the_files_flags():
    flags = {"configs": ["base"], "lengths": ["128", "256"], "strategies": ["greedy"],
             "batch_size": 64, "source_length": 32, "vocab_size": 32000, "repeats": 3,
             "no_cache": False}
    line = _command_line(report.decoding_section(
        "decoding_gpu", _decoding_payload(command_flags=flags)))
    assert line == ("Command: `python -m benchmarks.decoding --configs=base --lengths=128,256 "
                    "--strategies=greedy --batch_size=64 --source_length=32 "
                    "--vocab_size=32000 --repeats=3 --nono_cache "
                    "--out=benchmarks/results/decoding_gpu.json`  ")


def test_a_decoding_file_without_flags_is_not_credited_to_another_runs_command():
    line = _command_line(report.decoding_section("decoding_gpu", _decoding_payload()))
    assert "python -m" not in line and "not recorded" in line
    # decoding_cpu.json, written before the flags were saved, keeps the command that was
    # always named for it, and only while it agrees with that command.
    with open(os.path.join(report.HERE, "results", "decoding_cpu.json")) as f:
        cpu = json.load(f)
    assert _command_line(report.decoding_section("decoding_cpu", cpu)) == \
        f"Command: `{report.DECODING_CPU_COMMAND}`  "
    line = _command_line(report.decoding_section("decoding_cpu", _decoding_payload()))
    assert "python -m" not in line and "not recorded" in line


def test_environment_records_the_options_it_is_given():
    assert environment({})["xla_compiler_options"] == {}
    assert environment(LAUNCHER)["xla_compiler_options"] == LAUNCHER
    assert environment()["xla_compiler_options"] == xla_cpu.compiler_options()


def _profile_payload(options, xla_defaults):
    return {"environment": dict(ENV, xla_compiler_options=options),
            "command_flags": {"model": "ViT-Ti_16", "batch_size": 32, "image_size": 224,
                              "precision": "float32", "top": 15,
                              "xla_defaults": xla_defaults, "attention": "xla",
                              "time_matmuls": False},
            "step_seconds": 1.0, "busy_seconds": 0.9, "op_seconds": 1.2, "page_faults": 0,
            "system_cpu_s": 0.0,
            "kinds": [{"kind": "matmul", "op_seconds": 1.2, "share": 1.0}],
            "top_ops": [{"kind": "matmul", "op_seconds": 1.0, "place": "fwd x"}]}


def test_profile_of_xla_defaults_is_not_rendered_with_the_launchers_options():
    # What vit_profile --xla_defaults writes now ({}), and what it wrote before (the
    # launcher's options, whatever the step was compiled with).
    for options in ({}, LAUNCHER):
        section = report.profile_section("vit_profile_cpu_defaults",
                                         _profile_payload(options, xla_defaults=True))
        measured = section.splitlines()[3]
        assert "steps compiled with XLA's default options" in measured, options
        assert "LIBRARY_FUSION_TYPE_REDUCE" not in section and "Eigen" not in section
    section = report.profile_section("vit_profile_cpu", _profile_payload(LAUNCHER, False))
    assert ("steps compiled with xla_cpu_experimental_ynn_fusion_type="
            "LIBRARY_FUSION_TYPE_REDUCE)." in section and "Eigen" in section)


def test_compiler_options_ab_names_the_options_of_its_variants():
    def payload(*variant_options):
        rows = [{"variant": f"v{i}", "copy": "a", "options": options, "model_overrides": {},
                 "train_flops": 1e9, "step_seconds": 1.0, "examples_per_sec": 32.0,
                 "speedup_over_v0": 1.0} for i, options in enumerate(variant_options)]
        return {"environment": dict(ENV, xla_compiler_options=LAUNCHER), "results": rows,
                "command_flags": {"model": "ViT-Ti_16", "variants": None,
                                  "model_variants": None}}

    # XLA's defaults against the launcher's options: the options column says which is which.
    measured = report.compiler_options_section("ab", payload({}, LAUNCHER)).splitlines()[3]
    assert "steps compiled with" not in measured
    measured = report.compiler_options_section("ab", payload({}, {})).splitlines()[3]
    assert "steps compiled with XLA's default options" in measured
    measured = report.compiler_options_section("ab", payload(LAUNCHER,
                                                             LAUNCHER)).splitlines()[3]
    assert "LIBRARY_FUSION_TYPE_REDUCE" in measured
