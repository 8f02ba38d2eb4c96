"""Where the time of a ViT training step goes: a profile of one step, grouped by kind of op.

  python -m benchmarks.vit_profile --model=ViT-Ti_16 --batch_size=32 \\
      --out=benchmarks/results/vit_profile_cpu.json

Traces one compiled AdamW step (the step of ``benchmarks.vit_throughput``) with
``jax.profiler``, reads the trace's XLA op events and sorts each op by what its compiled HLO
computation does: ``matmul`` (a dot or convolution, with whatever XLA fused into it),
``transpose/copy``, ``reduction``, ``elementwise`` (loop fusions: softmax, GELU, LayerNorm,
AdamW), ``other``. Op events of independent ops overlap in time (XLA:CPU runs them
concurrently), so the table gives each kind's summed op time and its share of that sum; the
``busy`` and ``step`` figures say how much of the step any op was running. The top ops are
listed with their place in the model (``op_name`` metadata, layer numbers folded). Page
faults and kernel CPU time per step come from ``getrusage`` (``trainer.host_memory``).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile
from typing import Any

import jax
from absl import app, flags

from benchmarks.common import environment, host_costs_per_call, table, write_json
from benchmarks.vit_steps import training_step
from trainer import host_memory

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "ViT-Ti_16", "A name from vit.VIT_VARIANTS.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("image_size", 224, "Square input resolution.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_integer("top", 15, "Ops to list by time.")
flags.DEFINE_string("out", None, "JSON output path.")

KINDS = ("matmul", "transpose/copy", "reduction", "elementwise", "other")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?\b([a-z][\w-]*)\(")
_COMPUTATION = re.compile(r"^%?([\w.\-]+) .*\{$")


def hlo_computations(hlo_text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(instruction name -> its HLO line, computation name -> its instructions' opcodes)."""
    lines, opcodes, current = {}, collections.defaultdict(list), None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header and " = " not in line.split("{")[0]:
            current = header.group(1)
            continue
        match = _INSTRUCTION.match(line)
        if match:
            lines.setdefault(match.group(1), line.strip())
            if current is not None:
                opcodes[current].append(match.group(2))
    return lines, opcodes


def op_kind(line: str, opcodes: dict[str, list[str]]) -> str:
    """One of ``KINDS`` for an HLO instruction line (a fusion: by the ops it calls)."""
    called = re.search(r"calls=%?([\w.\-]+)", line)
    ops = set(opcodes.get(called.group(1), [])) if called else set()
    own = _INSTRUCTION.match(line)
    if own:
        ops.add(own.group(2))
    if ops & {"dot", "convolution"}:
        return "matmul"
    if ops & {"reduce", "reduce-window"}:
        return "reduction"
    if ops & {"transpose", "copy"}:
        return "transpose/copy"
    if ops - {"parameter", "constant", "bitcast", "broadcast", "fusion", "tuple",
              "get-tuple-element", "reshape"}:
        return "elementwise"
    return "other"


def _model_place(line: str) -> str:
    """``fwd``/``bwd`` and the op's last three path components, layers folded:
    ``bwd MlpBlock_3/Dense_0/dot_general``."""
    name = re.search(r'op_name="([^"]+)"', line)
    if not name:
        return line.split("=")[0].strip()[:60]
    direction = "bwd" if "transpose(jvp(" in name.group(1) else "fwd"
    path = re.sub(r"encoderblock_\d+", "encoderblock_*", name.group(1)).split("/")
    return f"{direction} {'/'.join(path[-3:])}"


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total


def profile_step(run_step, hlo_text: str, top: int) -> dict[str, Any]:
    """Trace one ``run_step()`` and group its XLA op events (see the module docstring)."""
    for _ in range(2):
        jax.block_until_ready(run_step())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        jax.block_until_ready(run_step())
        jax.profiler.stop_trace()
        traces = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no *.trace.json.gz under {trace_dir}")
        with gzip.open(traces[0]) as f:
            events = json.load(f)["traceEvents"]
    lines, opcodes = hlo_computations(hlo_text)
    ops = [e for e in events if e.get("ph") == "X" and e.get("name") in lines]
    if not ops:
        raise RuntimeError("the trace has no events named after the step's HLO instructions")
    by_kind, by_place = collections.Counter(), collections.Counter()
    for event in ops:
        line = lines[event["name"]]
        kind = op_kind(line, opcodes)
        by_kind[kind] += event["dur"] / 1e6
        by_place[(kind, _model_place(line))] += event["dur"] / 1e6
    summed = sum(by_kind.values())
    spans = [(e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6) for e in ops]
    return {
        "op_seconds": summed,
        "busy_seconds": _union_seconds(spans),
        "step_seconds": max(s for _, s in spans) - min(s for s, _ in spans),
        "kinds": [{"kind": k, "op_seconds": by_kind[k], "share": by_kind[k] / summed}
                  for k in KINDS if by_kind[k]],
        "top_ops": [{"kind": k, "place": p, "op_seconds": s}
                    for (k, p), s in by_place.most_common(top)],
    }


def main(argv):
    del argv
    built = training_step(FLAGS.model, FLAGS.batch_size, FLAGS.image_size, FLAGS.precision)
    result = profile_step(built["run_step"], built["compiled_step"].as_text(), FLAGS.top)
    result.update(host_costs_per_call(built["run_step"]))
    print(f"{FLAGS.model}, batch {FLAGS.batch_size}: step {result['step_seconds']:.2f} s, "
          f"some op running {result['busy_seconds']:.2f} s, op time summed "
          f"{result['op_seconds']:.2f} s; {result['page_faults']:.0f} page faults and "
          f"{result['system_cpu_s']:.2f} s kernel CPU per step")
    print(table([dict(r, share=f"{r['share']:.1%}") for r in result["kinds"]],
                ["kind", "op_seconds", "share"]))
    print(table(result["top_ops"], ["kind", "op_seconds", "place"]))
    write_json(FLAGS.out, {"environment": environment(), **result,
                           "command_flags": {k: getattr(FLAGS, k) for k in (
                               "model", "batch_size", "image_size", "precision", "top")}})


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    app.run(main)
