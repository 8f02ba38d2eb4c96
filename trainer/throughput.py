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

# Dense peak TFLOP/s per device, by device kind prefix and precision (vendor data sheets).
PEAK_TFLOPS = {
    ("NVIDIA H100", "bfloat16"): 989.0, ("NVIDIA H100", "float32"): 67.0,
    ("NVIDIA H200", "bfloat16"): 989.0, ("NVIDIA H200", "float32"): 67.0,
    ("NVIDIA A100", "bfloat16"): 312.0, ("NVIDIA A100", "float32"): 19.5,
    ("TPU v4", "bfloat16"): 275.0, ("TPU v5 lite", "bfloat16"): 197.0,
    ("TPU v5", "bfloat16"): 459.0,
}


def lowered_flops(jitted: Any, *args: Any) -> float:
    """FLOPs of one call of ``jitted(*args)`` (all devices together), from XLA's cost analysis
    of the lowered program; 0.0 where the backend reports none."""
    analysis = jitted.lower(*args).cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
        analysis = analysis[0] if analysis else None
    return float(analysis.get("flops", 0.0)) if analysis else 0.0


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


def peak_flops(precision: str = "float32", matmul_size: int = 1024) -> tuple[float, str]:
    """Peak FLOP/s of all devices of this run and where the figure comes from.

    Accelerators: the published dense peak per device times the device count. CPU: a float32
    matmul measured now; simulated CPU devices share the host's cores, so it counts once per
    process.
    """
    device = jax.local_devices()[0]
    for (prefix, dtype), tflops in PEAK_TFLOPS.items():
        if device.device_kind.startswith(prefix) and dtype == precision:
            return (tflops * 1e12 * jax.device_count(),
                    f"published {device.device_kind} {precision} peak x {jax.device_count()}")
    return (measured_matmul_flops(matmul_size) * jax.process_count(),
            f"measured float32 {matmul_size}x{matmul_size} matmul x {jax.process_count()} "
            "process(es)")
