"""Writes benchmarks/README.md from the JSON results in benchmarks/results/.

  python -m benchmarks.report

Figures are copied from the measurement files, never typed in; each section names the command
that produced its file, the date and the machine.
"""

from __future__ import annotations

import glob
import json
import os
import shlex

from benchmarks.common import table
from benchmarks.step_matmuls import MATMUL_COLUMNS, matmuls_alone_summary

HERE = os.path.dirname(os.path.abspath(__file__))
# decoding_cpu.json (2026-11-25) was written before benchmarks.decoding saved its flags; this
# report named this command for it from the start. It stands for that file only, and only
# while the file agrees with it; any other decoding file names the command its flags give.
DECODING_CPU_COMMAND = ("python -m benchmarks.decoding --configs=tiny,base --lengths=16,32,64 "
                        "--batch_size=4 --repeats=3 --out=benchmarks/results/decoding_cpu.json")


def _decoding_command(name: str, payload: dict) -> str:
    if "command_flags" in payload:
        return f"`{_command('decoding', payload, name)}`"
    rows = payload["results"]
    if (name == "decoding_cpu" and payload["batch_size"] == 4
            and payload["source_length"] == 32
            and {r["config"] for r in rows} == {"tiny", "base"}
            and {r["length"] for r in rows} == {16, 32, 64}):
        return f"`{DECODING_CPU_COMMAND}`"
    return "not recorded (this file has no command_flags)"


def decoding_section(name: str, payload: dict) -> str:
    env = payload["environment"]
    rows = payload["results"]
    lines = [
        f"## Decoding speed ({name})",
        "",
        f"Command: {_decoding_command(name, payload)}  ",
        f"Measured {env['date']} on {env['device_kind']} ({env['backend']}, "
        f"{env['cpu_count']} CPU cores, jax {env['jax']}); batch {payload['batch_size']}, "
        f"source length {payload['source_length']}.",
        "",
        "```",
        table(rows, ["config", "strategy", "variant", "length", "tokens_per_sec",
                     "ms_per_token_step"]),
        "```",
        "",
        "Per-step time at the longest output length divided by that at the shortest "
        "(1.0 = each step costs the same however long the output already is):",
        "",
        "```",
        table(payload["scaling"], ["config", "strategy", "variant", "lengths",
                                   "per_step_time_ratio"]),
        "```",
        "",
    ]
    return "\n".join(lines)


def _command(module: str, payload: dict, out: str, python: str = "python") -> str:
    """The command line that wrote ``out``, rebuilt from the flags saved in it."""
    flags = []
    for key, value in payload["command_flags"].items():
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            flags.append(f"--{key}" if value else f"--no{key}")
            continue
        flags.append(shlex.quote(f"--{key}={value}"))  # JSON-valued flags need quotes
    return " ".join([python, "-m", f"benchmarks.{module}", *flags,
                     f"--out=benchmarks/results/{out}.json"])


def _measured(env: dict) -> str:
    tunables = env.get("glibc_tunables")
    options = env.get("xla_compiler_options")  # absent: not recorded; {}: XLA's defaults
    if options:
        compiled = ", steps compiled with " + " ".join(f"{k}={v}" for k, v in options.items())
    elif options is not None:
        compiled = ", steps compiled with XLA's default options"
    else:
        compiled = ""
    return (f"Measured {env['date']} on {env['device_kind']} ({env['backend']}, "
            f"{env['cpu_count']} CPU cores, jax {env['jax']}"
            + (f", GLIBC_TUNABLES={tunables}" if tunables else "") + compiled + ").")


def _section(title: str, command: str, measured: str, rows: list, columns: list) -> str:
    return "\n".join([f"## {title}", "", f"Command: `{command}`  ", measured, "", "```",
                      table(rows, columns), "```", ""])


def _each_peak(payload: dict) -> str:
    measured = payload.get("peak_tflops_measured")  # absent in files from before 2026-11-29
    return ": " + ", ".join(f"{p:.3f}" for p in measured) if measured else ""


def _attention_columns(rows: list) -> list:
    """The attention columns where a row asked for cuDNN's kernel (GPU runs; absent in files
    from before 2026-11-29)."""
    if any(r.get("attention", "xla") != "xla" for r in rows):
        return ["attention", "train_fused_attention_calls", "infer_fused_attention_calls"]
    return []


def _device_peak_column(rows: list) -> list:
    """The device's own peak where a row has one (GPU/TPU runs since 2026-11-30 night; before,
    ``peak_memory_mb`` itself was that counter there)."""
    return ["device_peak_memory_mb"] if any(r.get("device_peak_memory_mb") for r in rows) else []


def throughput_section(name: str, payload: dict) -> str:
    rows = [dict(r, train_mfu=f"{r['train_mfu']:.1%}", infer_mfu=f"{r['infer_mfu']:.1%}")
            for r in payload["results"]]
    return _section(
        f"ViT throughput and MFU ({name})", _command("vit_throughput", payload, name),
        _measured(payload["environment"]) + f" Peak for MFU: {payload['peak_tflops']:.3f} "
        f"TFLOP/s ({payload['peak_source']}{_each_peak(payload)}).",
        rows, ["model", "batch_size", "precision", "train_examples_per_sec",
               "train_tflops_per_sec", "train_mfu", "infer_examples_per_sec", "infer_mfu",
               "peak_memory_mb", *_device_peak_column(rows), "train_page_faults_per_step",
               *_attention_columns(rows)])


def timm_section(name: str, payload: dict) -> str:
    first = payload["results"][0]
    return _section(
        f"Side by side with timm ({name})",
        _command("vit_vs_timm", payload, name, ".venv-bench/bin/python"),
        "After `make bench-torch`. " + _measured(payload["environment"])
        + f" PyTorch {first['torch']} "
        f"({first['torch_threads']} threads, {first['torch_device']}), timm {first['timm']}; "
        "medians over alternating rounds; ratio > 1: ours is faster. timm's model uses the "
        "official ViT's tanh GELU, as ours does. "
        + ("Our last block computes only the class token its head reads (the same outputs, "
           "fewer FLOPs); `--noskip_unread_tokens` gives ours timm's arithmetic."
           if first.get("ours_skip_unread_tokens", True) else
           "Ours computes every token of the last block, as timm does."),
        payload["results"], ["model", "batch_size", "precision", "ours_examples_per_sec",
                             "timm_examples_per_sec", "ratio_ours_over_timm"])


def memory_section(name: str, payload: dict) -> str:
    rows = payload["results"]
    memory = {r["variant"]: r["memory_gib"] for r in rows}
    # A remat row beside the row it should improve on: baseline, or scan for scan_remat_*.
    unchanged = [r["variant"] for r in rows if "remat" in r["variant"] and r["memory_gib"]
                 == memory.get("scan" if r["variant"].startswith("scan") else "baseline")]
    note = ""
    if unchanged:
        note = (f" On this backend XLA reports the same memory for {', '.join(unchanged)} as "
                "without remat")
        if any(v.startswith("scan_remat") and v not in unchanged for v in memory):
            note += "; remat saves memory here under scan_layers (the scan_remat rows)"
        note += "; see benchmarks/vit_memory.py."
    return _section(
        f"Training-step memory ({name})", _command("vit_memory", payload, name),
        _measured(payload["environment"]) + f" {payload['memory_source']}; largest batch "
        f"within {payload['budget_gib']:.1f} GiB ({payload['budget_source']})." + note,
        rows, ["variant", "model", "batch_size", "memory_gib", "largest_batch"])


def profile_section(name: str, payload: dict) -> str:
    flags = payload["command_flags"]
    env = payload["environment"]
    if flags.get("xla_defaults"):
        # Older files recorded the launcher's options whatever the step was compiled with;
        # under --xla_defaults it was compiled with XLA's defaults.
        env = dict(env, xla_compiler_options={})
    summary = (
        f"{flags['model']}, batch {flags['batch_size']}, {flags['precision']}: step "
        f"{payload['step_seconds']:.2f} s, some op running {payload['busy_seconds']:.2f} s, "
        f"op time summed {payload['op_seconds']:.2f} s (concurrent ops overlap); "
        f"{payload['page_faults']:.0f} page faults and {payload['system_cpu_s']:.2f} s of "
        "kernel CPU per step.")
    if env.get("xla_compiler_options"):
        summary += (" Matmuls ran in Eigen (launcher's options), which finishes them on its "
                    "own threads after their op events end: the matmul row undercounts, and "
                    f"{payload['step_seconds'] - payload['busy_seconds']:.2f} s of the step "
                    "show no op running.")
    kinds = [dict(r, share=f"{r['share']:.1%}") for r in payload["kinds"]]
    lines = [_section(f"Where a training step's time goes ({name})",
                      _command("vit_profile", payload, name),
                      _measured(env) + " " + summary,
                      kinds, ["kind", "op_seconds", "share"]),
             "```", table(payload["top_ops"], ["kind", "op_seconds", "place"]), "```", ""]
    if "matmuls_alone" in payload:
        alone = payload["matmuls_alone"]
        rows = [dict(r, share=f"{r['share']:.1%}") for r in alone["rows"][:flags["top"]]]
        lines += [matmuls_alone_summary(alone, payload["step_seconds"]), "",
                  "```", table(rows, MATMUL_COLUMNS), "```", ""]
    return "\n".join(lines)


def _joined(settings: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items()) or "(none)"


def compiler_options_section(name: str, payload: dict) -> str:
    rows = [dict(r, options=_joined(r["options"]),
                 model_overrides=_joined(r.get("model_overrides", {})),
                 train_gflops=r.get("train_flops", 0) / 1e9)  # absent before 2026-11-30
            for r in payload["results"]]
    speedup = next(k for k in rows[0] if k.startswith("speedup_over_"))
    # The environment records the launcher's options; each variant's own are in its row.
    options = [r["options"] for r in payload["results"]]
    env = dict(payload["environment"], xla_compiler_options=options[0])
    if any(o != options[0] for o in options):
        del env["xla_compiler_options"]  # the options column says them
    of_model = bool(payload["command_flags"].get("model_variants"))
    return _section(
        f"{'Model switches' if of_model else 'XLA compiler options'}, A/B in one process "
        f"({name})",
        _command("compiler_options_ab", payload, name),
        _measured(env) + " Each variant compiled and timed twice (copies a "
        "and b, alternating rounds; medians): copies of one variant that differ show the "
        "noise.", rows, ["variant", "copy", "step_seconds", "examples_per_sec", speedup,
                         *(["train_gflops", "model_overrides"] if of_model else ["options"])])


SECTIONS = {"vit_throughput": throughput_section, "vit_vs_timm": timm_section,
            "vit_memory": memory_section, "vit_profile": profile_section,
            "compiler_options_ab": compiler_options_section}


def main() -> None:
    sections = ["# Benchmarks", "",
                "Generated by `python -m benchmarks.report` from `benchmarks/results/*.json`; "
                "rerun the command of a section to refresh it. Where the time of a ViT "
                "training step goes on the CPU, and what was changed for it: "
                "[docs/performance.md](../docs/performance.md).", ""]
    for path in sorted(glob.glob(os.path.join(HERE, "results", "*.json"))):
        name = os.path.splitext(os.path.basename(path))[0]
        with open(path) as f:
            payload = json.load(f)
        if name.startswith("decoding"):
            sections.append(decoding_section(name, payload))
        for prefix, section in SECTIONS.items():
            if name.startswith(prefix + "_"):
                sections.append(section(name, payload))
    with open(os.path.join(HERE, "README.md"), "w") as f:
        f.write("\n".join(sections))


if __name__ == "__main__":
    main()
