"""Model FLOPs and the device peak, for model FLOPs utilisation (MFU).

FLOPs come from XLA's cost analysis of the *lowered* step (the program as written, before XLA's
optimisations): the model's own arithmetic, which is what MFU divides, not what a
rematerialising compiler adds. The launcher logs ``train/mfu`` with this count and
``benchmarks/vit_throughput.py`` reports it, so the two agree.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from trainer import xla_cpu

# Dense peak TFLOP/s per device, by device kind prefix and precision (vendor data sheets). The
# longest matching prefix wins: "NVIDIA H100 PCIe" is not the SXM part ("NVIDIA H100 80GB HBM3").
PEAK_TFLOPS = {
    ("NVIDIA H100", "bfloat16"): 989.0, ("NVIDIA H100", "float32"): 67.0,
    ("NVIDIA H100 PCIe", "bfloat16"): 756.0, ("NVIDIA H100 PCIe", "float32"): 51.0,
    ("NVIDIA H100 NVL", "bfloat16"): 835.0, ("NVIDIA H100 NVL", "float32"): 60.0,
    ("NVIDIA H200", "bfloat16"): 989.0, ("NVIDIA H200", "float32"): 67.0,
    ("NVIDIA H200 NVL", "bfloat16"): 835.0, ("NVIDIA H200 NVL", "float32"): 60.0,
    ("NVIDIA A100", "bfloat16"): 312.0, ("NVIDIA A100", "float32"): 19.5,
    # TF32 tensor cores, dense (half the sheets' with-sparsity figures): what float32 matmuls
    # run on by default on these GPUs (``matmul_precision``).
    ("NVIDIA H100", "tensorfloat32"): 494.5, ("NVIDIA H100 PCIe", "tensorfloat32"): 378.0,
    ("NVIDIA H100 NVL", "tensorfloat32"): 417.5, ("NVIDIA H200", "tensorfloat32"): 494.5,
    ("NVIDIA H200 NVL", "tensorfloat32"): 417.5, ("NVIDIA A100", "tensorfloat32"): 156.0,
    ("TPU v4", "bfloat16"): 275.0, ("TPU v5 lite", "bfloat16"): 197.0,
    ("TPU v5", "bfloat16"): 459.0,
}


class LoopInProgramError(ValueError):
    """The program has a loop, whose body XLA's cost analysis counts once."""


def lowered_flops(jitted: Any, *args: Any) -> float:
    """FLOPs of one call of ``jitted(*args)`` (all devices together), from XLA's cost analysis
    of the lowered program, plus those of cuDNN's fused attention calls in it (XLA counts none
    for a custom call: ``cudnn_attention_flops``, read from the traced program); 0.0 where no
    analysis is available.

    ``args`` may be arrays or ``jax.ShapeDtypeStruct``s. Raises ``LoopInProgramError`` for a
    program with a loop (a scanned layer stack, gradient accumulation): the cost analysis
    counts a loop's body once, not once per iteration, so the count would be a fraction of
    the work; count the loop-free equivalent instead (``counting_config``).
    """
    traced = jitted.trace(*args)
    if _loops_over_matmuls(traced.jaxpr.jaxpr):
        raise LoopInProgramError(
            "the program runs matmuls in a loop (a scan or while loop): XLA's cost analysis "
            "counts a loop's body once, so its FLOPs would be undercounted; count a loop-free "
            "equivalent (no scan_layers, accum_steps=1)")
    lowered = traced.lower()
    analysis = lowered.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
        analysis = analysis[0] if analysis else None
    if analysis is None:
        analysis = _cost_analysis_by_cpu_client(lowered)
    flops = float(analysis.get("flops", 0.0)) if analysis else 0.0
    return flops + cudnn_attention_flops(traced.jaxpr.jaxpr)


_LOOPS = ("scan", "while")
_MATMULS = ("dot_general", "conv_general_dilated")


def _sub_jaxprs(eqn: Any):
    """The jaxprs in an equation's parameters (loop bodies, branches, nested jits)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", item)  # a ClosedJaxpr holds a Jaxpr
            if hasattr(inner, "eqns"):
                yield inner


def _has_matmul(jaxpr: Any) -> bool:
    return any(eqn.primitive.name in _MATMULS or any(map(_has_matmul, _sub_jaxprs(eqn)))
               for eqn in jaxpr.eqns)


def _loops_over_matmuls(jaxpr: Any) -> bool:
    """Whether a scan or while loop runs a matmul: the loops of random-number generation
    (threefry's rounds, gamma sampling for mixup) hold none and do not matter to MFU."""
    for eqn in jaxpr.eqns:
        subs = list(_sub_jaxprs(eqn))
        if eqn.primitive.name in _LOOPS and any(map(_has_matmul, subs)):
            return True
        if any(map(_loops_over_matmuls, subs)):
            return True
    return False


# How the step schedules the model's arithmetic, not what it computes: a scanned stack and
# gradient accumulation are loops (counted once by the cost analysis), rematerialisation adds
# recomputation that MFU does not count. The FLOPs of a step are those of the same step with
# these at their plain values.
SCHEDULING_FIELDS = (("model", "scan_layers", False), ("model", "remat_policy", "none"),
                     ("optimizer", "accum_steps", 1))


def counting_config(config: Any) -> Any | None:
    """``config`` with ``SCHEDULING_FIELDS`` at their plain values, whose step does the same
    model arithmetic without loops or recomputation; None when ``config`` is already so."""
    changes = [(section, name, plain) for section, name, plain in SCHEDULING_FIELDS
               if section in config and config[section].get(name, plain) != plain]
    if not changes:
        return None
    counting = config.copy_and_resolve_references()
    for section, name, plain in changes:
        counting[section][name] = plain
    return counting


def _cost_analysis_by_cpu_client(lowered: Any) -> dict[str, float] | None:
    """XLA's cost analysis of the lowered program, run by the CPU client.

    Why: JAX has no cost analysis of a lowered program on backends it reaches through a PJRT
    plugin (the GPU: ``Lowered.cost_analysis()`` returns None), and the compiled program's
    analysis would count what the compiler adds (rematerialisation) and miss what it hands to
    libraries. The lowered program is the same on every backend, so the CPU's ``HloCostAnalysis``
    counts the same FLOPs. This goes through JAX's internal ``hlo_module_cost_analysis``: None
    where that is missing or fails.
    """
    try:
        from jax._src.lib import _jax  # internal; no public API analyses a lowered module

        module = lowered.compiler_ir("hlo").as_hlo_module()
        return _jax.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
    except Exception:  # noqa: BLE001 - any failure means: no count (MFU then reads 0)
        return None


# JAX's cuDNN fused-attention primitives (jax/_src/cudnn/fused_attention_stablehlo.py) and
# how many passes of the forward's two matmuls (QKᵀ, PV) each does: the backward does four
# (dV, dP, dQ, dK), which is what XLA counts for the same attention written out.
_CUDNN_ATTENTION_PASSES = {"dot_product_attention_fwd_wrapper": 1,
                           "dot_product_attention_bwd_wrapper": 2}
_BNTH_LAYOUT = 1  # jax's AttentionLayout.BNTH: [batch, heads, length, head_dim]


def cudnn_attention_flops(jaxpr: Any) -> float:
    """FLOPs of the cuDNN fused-attention calls in a traced program (``jax.core.Jaxpr``).

    A call's first two operands are the query and the key, ``[batch, length, heads,
    head_dim]`` (or heads before length in the BNTH layout): the forward pass is
    ``4 * batch * heads * q_length * kv_length * head_dim``, the backward twice that.

    Read from the traced program, not the lowered text: on more than one device JAX lowers
    the call as a ``CustomSPMDPartitioning`` call that the SPMD partitioner turns into cuDNN's
    kernel only at compile time, so the lowered text of a data-parallel step holds none.
    Of a ``cond``'s branches, only one runs: the costliest counts, as XLA's cost analysis
    counts a conditional (the rest of the step's FLOPs come from it).
    """
    flops = 0.0
    for eqn in jaxpr.eqns:
        passes = _CUDNN_ATTENTION_PASSES.get(eqn.primitive.name)
        if passes:
            query, key = (variable.aval.shape for variable in eqn.invars[:2])
            kv_length = key[2] if eqn.params.get("layout") == _BNTH_LAYOUT else key[1]
            flops += passes * 4.0 * float(np.prod(query)) * kv_length
        inner = [cudnn_attention_flops(sub) for sub in _sub_jaxprs(eqn)]
        flops += max(inner, default=0.0) if eqn.primitive.name == "cond" else sum(inner)
    return flops


def measured_matmul_flops(size: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a float32 ``[size, size] @ [size, size]`` on this process's first device:
    the fastest of ``repeats`` timed calls after one warm-up (a peak is the best case; the
    median let a moment of other load lower it, and MFU exceeded 100%), compiled both with
    XLA's defaults and with the launcher's options (trainer.xla_cpu), whichever is faster."""
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(size, size)),
                                   jnp.float32), jax.local_devices()[0])
    launcher_options = xla_cpu.compiler_options()
    option_sets = [{}, launcher_options] if launcher_options else [{}]
    times = []
    for options in option_sets:
        matmul = jax.jit(lambda x: x @ x, compiler_options=options)
        jax.block_until_ready(matmul(a))
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(matmul(a))
            times.append(time.perf_counter() - start)
    return 2.0 * size**3 / float(np.min(times))


def published_peak_tflops(device_kind: str, precision: str) -> float | None:
    """``PEAK_TFLOPS`` of the longest prefix of ``device_kind`` listed for ``precision``."""
    matches = [(len(prefix), tflops) for (prefix, dtype), tflops in PEAK_TFLOPS.items()
               if device_kind.startswith(prefix) and dtype == precision]
    return max(matches)[1] if matches else None


# Settings of ``jax_default_matmul_precision`` under which XLA:GPU multiplies float32 matrices
# in TF32 (None and "default" included: TF32 is the GPU's default for float32 dots).
_TF32_SETTINGS = (None, "default", "high", "tensorfloat32")


def matmul_precision(precision: str, platform: str) -> str:
    """The precision float32 matmuls really run in: ``"tensorfloat32"`` on a GPU unless
    ``jax_default_matmul_precision`` asks for full float32 ("highest"/"float32"); else
    ``precision``. A float32 MFU against the plain float32 peak could exceed 100% there."""
    if (precision == "float32" and platform == "gpu"
            and jax.config.jax_default_matmul_precision in _TF32_SETTINGS):
        return "tensorfloat32"
    return precision


def peak_flops(precision: str = "float32", matmul_size: int = 1024,
               devices: int | None = None) -> tuple[float, str]:
    """Peak FLOP/s of the devices a program runs on and where the figure comes from.

    Accelerators: the published dense peak per device, for the precision matmuls run in
    (``matmul_precision``), times ``devices`` (default: every device of the run, as the
    launcher's data-parallel step uses; a benchmark of a one-device step passes 1). CPU: a
    float32 matmul measured now; simulated CPU devices share the host's cores, so it counts
    once per process.
    """
    device = jax.local_devices()[0]
    precision = matmul_precision(precision, device.platform)
    tflops = published_peak_tflops(device.device_kind, precision)
    if tflops is not None:
        count = jax.device_count() if devices is None else devices
        return (tflops * 1e12 * count,
                f"published {device.device_kind} {precision} peak x {count}")
    return (measured_matmul_flops(matmul_size) * jax.process_count(),
            f"measured float32 {matmul_size}x{matmul_size} matmul x {jax.process_count()} "
            "process(es)")
