"""Grouping a profiled training step's XLA ops by kind (no flags here, so tests and every
benchmark can import it; ``benchmarks.vit_profile`` is the command line)."""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
from typing import Any

import jax

from transformer.attention import CUDNN_ATTENTION_TARGET

KINDS = ("matmul", "fused attention", "transpose/copy", "reduction", "elementwise", "other")
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
    if CUDNN_ATTENTION_TARGET in line:  # GPU: cuDNN's fused attention (transformer.attention)
        return "fused attention"
    if ops & {"dot", "convolution"} or "__cublas" in line:  # GPU: cuBLAS matmul custom calls
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


def _op_events(events: list[dict], lines: dict[str, str]) -> list[tuple[str, dict]]:
    """(HLO instruction name, event) of the trace's op events. On a GPU the device's kernel
    events name their instruction in ``args.hlo_op``; only those are used there, since the
    host's events of the same ops would count them twice."""
    ops = [(e.get("args", {}).get("hlo_op"), e) for e in events if e.get("ph") == "X"]
    ops = [(name, e) for name, e in ops if name in lines]
    if ops:
        return ops
    return [(e["name"], e) for e in events if e.get("ph") == "X" and e.get("name") in lines]


def profile_step(run_step, hlo_text: str, top: int,
                 keep_trace_in: str | None = None) -> dict[str, Any]:
    """Trace one ``run_step()`` and group its XLA op events by kind (how to read the result:
    the docstring of benchmarks/vit_profile.py). ``keep_trace_in``: a directory that receives
    the raw trace (``step.trace.json.gz``) and the compiled HLO (``step_hlo.txt.gz``)."""
    for _ in range(2):
        jax.block_until_ready(run_step())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        jax.block_until_ready(run_step())
        jax.profiler.stop_trace()
        traces = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        if not traces:
            raise RuntimeError(f"jax.profiler wrote no *.trace.json.gz under {trace_dir}")
        if keep_trace_in:
            os.makedirs(keep_trace_in, exist_ok=True)
            shutil.copy(traces[0], os.path.join(keep_trace_in, "step.trace.json.gz"))
            with gzip.open(os.path.join(keep_trace_in, "step_hlo.txt.gz"), "wt") as f:
                f.write(hlo_text)
        with gzip.open(traces[0]) as f:
            events = json.load(f)["traceEvents"]
    lines, opcodes = hlo_computations(hlo_text)
    named_ops = _op_events(events, lines)
    if not named_ops:
        raise RuntimeError("the trace has no events named after the step's HLO instructions")
    ops = [event for _, event in named_ops]
    by_kind, by_place = collections.Counter(), collections.Counter()
    for name, event in named_ops:
        line = lines[name]
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
