"""Every matmul of a lowered step, timed alone: how much of the step its matmuls account for.

Compiled with the launcher's options (trainer.xla_cpu), XLA:CPU runs the matmuls in Eigen,
which finishes them on its own threads after the op's trace event has ended, so a profile of
the step cannot say how long they take (benchmarks/step_profile.py). This module reads each
``stablehlo.dot_general`` of the lowered, unoptimised program, times each distinct one alone
(same operand shapes, dimension numbers and dtypes, random operands, jitted with the same
compiler options) and adds up the medians over all occurrences: the time the step would take
if it did nothing but its matmuls, each at the rate it reaches alone. The rest of the step is
the other work (elementwise, reductions, transposes, the optimizer) plus what running inside
the step costs the matmuls (caches, memory traffic). It is an estimate, not a bound: a dot
that the compiled step fuses with other work (XLA:CPU hands the attention's ``Q·Kᵀ`` to
YNNPACK together with the softmax's reductions) is timed here as a plain dot, and
independent ops of the step run side by side, so the sum can exceed the step's time.

Each dot is read once per textual occurrence, so dots in a loop body (``scan_layers``) would
be counted once instead of once per iteration; such programs are refused.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import time_call
from trainer.throughput import peak_flops

_DIMS = r"\[([\d, ]*)\] x \[([\d, ]*)\]"
_DOT_GENERAL = re.compile(
    r"stablehlo\.dot_general\s+%[\w#]+,\s*%[\w#]+,"
    rf"\s*(?:batching_dims = {_DIMS},\s*)?contracting_dims = {_DIMS}"
    r".*:\s*\(tensor<([\w]+)>,\s*tensor<([\w]+)>\)\s*->\s*tensor<([\w]+)>")
# StableHLO element types and the NumPy/JAX dtypes of the operands built for them.
_DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16, "f64": jnp.float64}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace(" ", "").split(",") if v)


def _joined(values: tuple[int, ...], separator: str = ",") -> str:
    return separator.join(map(str, values))


def _tensor_type(text: str) -> tuple[tuple[int, ...], str]:
    """``"32x197x192xf32"`` -> ``((32, 197, 192), "f32")``."""
    *dims, element = text.split("x")
    return tuple(int(d) for d in dims), element


@dataclasses.dataclass(frozen=True)
class Matmul:
    """One ``dot_general``: operand shapes and element types, and its dimension numbers."""
    lhs_shape: tuple[int, ...]
    rhs_shape: tuple[int, ...]
    lhs_dtype: str
    rhs_dtype: str
    out_dtype: str
    lhs_batch: tuple[int, ...]
    rhs_batch: tuple[int, ...]
    lhs_contracting: tuple[int, ...]
    rhs_contracting: tuple[int, ...]

    @property
    def flops(self) -> int:
        """2 x (batch x free dims of both operands) x contracted size: one multiply-add each."""
        contracted = math.prod(self.lhs_shape[d] for d in self.lhs_contracting)
        lhs_rest = math.prod(self.lhs_shape) // contracted
        rhs_free = math.prod(s for d, s in enumerate(self.rhs_shape)
                             if d not in self.rhs_batch and d not in self.rhs_contracting)
        return 2 * lhs_rest * rhs_free * contracted

    def describe(self) -> str:
        """A readable label: ``32x197x192 . 192x768 (contract 2/0; f32)``."""
        batch = (f"batch {_joined(self.lhs_batch)}/{_joined(self.rhs_batch)}, "
                 if self.lhs_batch else "")
        return (f"{_joined(self.lhs_shape, 'x')} . {_joined(self.rhs_shape, 'x')} ({batch}"
                f"contract {_joined(self.lhs_contracting)}/{_joined(self.rhs_contracting)}; "
                f"{self.lhs_dtype})")

    def run(self, compiler_options: dict[str, Any]):
        """A jitted ``dot_general`` of this shape and its random operands."""
        rng = np.random.default_rng(0)
        lhs, rhs = (jnp.asarray(rng.standard_normal(shape, dtype=np.float32), _DTYPES[dtype])
                    for shape, dtype in ((self.lhs_shape, self.lhs_dtype),
                                         (self.rhs_shape, self.rhs_dtype)))
        dims = ((self.lhs_contracting, self.rhs_contracting), (self.lhs_batch, self.rhs_batch))
        fn = jax.jit(lambda a, b: jax.lax.dot_general(
            a, b, dims, preferred_element_type=_DTYPES[self.out_dtype]),
            compiler_options=compiler_options)
        return fn, lhs, rhs


def matmuls_of(stablehlo_text: str) -> collections.Counter[Matmul]:
    """The program's ``dot_general`` ops, counted by shape, dtype and dimension numbers.

    Raises ValueError for a program with a loop (its body's dots run more than once) or for a
    ``dot_general`` line this parser does not read (so none is silently left out).
    """
    if "stablehlo.while" in stablehlo_text:
        raise ValueError("the program has a stablehlo.while loop: its dots would be counted "
                         "once instead of once per iteration; time an unrolled program "
                         "(scan_layers=False)")
    counts: collections.Counter[Matmul] = collections.Counter()
    for line in stablehlo_text.splitlines():
        if "stablehlo.dot_general" not in line:
            continue
        match = _DOT_GENERAL.search(line)
        if match is None:
            raise ValueError(f"unreadable dot_general: {line.strip()[:200]!r}")
        lb, rb, lc, rc, lhs, rhs, out = match.groups()
        (lhs_shape, lhs_dtype), (rhs_shape, rhs_dtype) = _tensor_type(lhs), _tensor_type(rhs)
        counts[Matmul(lhs_shape, rhs_shape, lhs_dtype, rhs_dtype, _tensor_type(out)[1],
                      _ints(lb or ""), _ints(rb or ""), _ints(lc), _ints(rc))] += 1
    return counts


def time_matmuls(counts: collections.Counter[Matmul], compiler_options: dict[str, Any],
                 rounds: int = 5, repeats: int = 3) -> dict[str, Any]:
    """Times each distinct matmul alone: ``rounds`` rounds that go through all of them in
    turn (so that the machine's drift spreads over every shape), ``repeats`` calls each per
    round; the median of the rounds' medians, as benchmarks.compiler_options_ab does.

    Returns ``seconds`` (sum over occurrences of the medians), ``flops`` (sum over
    occurrences) and ``rows``: one dict per distinct matmul (``matmul``, ``count``,
    ``gflop`` each, ``ms`` each, ``gflop_per_s``, ``total_ms``, ``share`` of ``seconds``),
    the costliest first.
    """
    runs = {matmul: functools.partial(*matmul.run(compiler_options)) for matmul in counts}
    for run in runs.values():  # compile and warm up
        jax.block_until_ready(run())
    times: dict[Matmul, list[float]] = {matmul: [] for matmul in counts}
    for _ in range(rounds):
        for matmul, run in runs.items():
            times[matmul].append(time_call(run, repeats, warmup=0))
    medians = {matmul: float(np.median(t)) for matmul, t in times.items()}
    seconds = sum(medians[m] * n for m, n in counts.items())
    rows = [{"matmul": m.describe(), "count": n, "gflop": m.flops / 1e9,
             "ms": medians[m] * 1e3, "gflop_per_s": m.flops / medians[m] / 1e9,
             "total_ms": medians[m] * n * 1e3, "share": medians[m] * n / seconds}
            for m, n in counts.items()]
    rows.sort(key=lambda r: -r["total_ms"])
    return {"seconds": seconds, "flops": float(sum(m.flops * n for m, n in counts.items())),
            "rows": rows}


MATMUL_COLUMNS = ["matmul", "count", "gflop", "ms", "gflop_per_s", "total_ms", "share"]


def matmuls_alone(built: dict[str, Any], precision: str, matmul_size: int = 2048
                  ) -> dict[str, Any]:
    """The matmuls of a step built by ``benchmarks.vit_steps.training_step``, timed alone
    (``time_matmuls``), and ``matmul_only_mfu``: the step's FLOPs (XLA's count, as for the
    MFU) over their summed time, against the peak of ``trainer.throughput.peak_flops`` (on a
    CPU a ``matmul_size``-square float32 matmul, measured before and after the timings and the
    best kept, as benchmarks.vit_throughput does)."""
    peaks = [peak_flops(precision, matmul_size, devices=1)]
    alone = time_matmuls(matmuls_of(built["lowered_step_text"]), built["compiler_options"])
    peaks.append(peak_flops(precision, matmul_size, devices=1))
    peak, peak_source = max(peaks)
    # cuDNN's fused attention is a custom call, not a dot_general: its time is not in the sum.
    return dict(alone, step_flops=built["train_flops"], peak_flops=peak,
                peak_source=peak_source,
                untimed_fused_attention_calls=built["train_fused_attention_calls"],
                matmul_only_mfu=built["train_flops"] / alone["seconds"] / peak)


def matmuls_alone_summary(alone: dict[str, Any], step_seconds: float) -> str:
    """``matmuls_alone``'s result beside the step's measured time and MFU."""
    step_mfu = alone["step_flops"] / step_seconds / alone["peak_flops"]
    fused = alone.get("untimed_fused_attention_calls", 0)
    untimed = (f" The step's {fused} fused attention calls (custom calls, not dot_generals) "
               "are not timed: the second figure overstates." if fused else "")
    return (f"The step's {sum(r['count'] for r in alone['rows'])} matmuls "
            f"({len(alone['rows'])} shapes), each timed alone: {alone['seconds']:.2f} s in "
            f"all, {alone['seconds'] / step_seconds:.0%} of the {step_seconds:.2f} s step "
            f"({alone['flops'] / alone['seconds'] / 1e9:.1f} GFLOP/s). Against the peak "
            f"({alone['peak_flops'] / 1e9:.0f} GFLOP/s, {alone['peak_source']}) the step's "
            f"MFU is {step_mfu:.1%}; its FLOPs over the matmuls' time alone make "
            f"{alone['matmul_only_mfu']:.1%}." + untimed)
