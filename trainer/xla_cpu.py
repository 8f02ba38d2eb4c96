"""XLA:CPU compiler options the launcher and the benchmarks compile their steps with.

The jaxlib this project is measured with (0.10.2) hands every matmul on the CPU to YNNPACK
(XLA fuses each ``dot`` into a ``__ynn_fusion``). On this project's 2-core AVX2 CPU, Eigen,
XLA's other CPU matmul library, runs the ViT's matmuls faster, so YNNPACK is left the
reductions only
(``xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE``): a ViT-Ti/16 AdamW step
at batch 32 ran 1.18x and 1.20x as fast as with XLA's defaults, in two copies of each
variant alternated in one process (``python -m benchmarks.compiler_options_ab
--model=ViT-Ti_16 --batch_size=32 --rounds=5``, 2026-11-29; benchmarks/README.md). Reductions
out of YNNPACK as well was no faster, elementwise fusions into it slower (docs/performance.md).

The options go to ``jax.jit(..., compiler_options=...)`` of the jitted steps, not to
``XLA_FLAGS``: an option a newer jaxlib no longer knows is then dropped (``compiler_options``
probes it once) instead of aborting the process. Off CPU the options are not used, and
``VITKD_XLA_CPU_OPTIONS=0`` turns them off.

The same call also lowers JAX's threefry random bits on the CPU with their 20 rounds written
out (``unroll_threefry_on_cpu``), as JAX already does on GPU and TPU: dropout masks of the
digits demo took a fifth of its step, and the bits stay the same.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# Matmuls through Eigen; YNNPACK keeps the reductions (LayerNorm, softmax sums).
CPU_OPTIONS: dict[str, Any] = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE",
}
OPT_OUT = "VITKD_XLA_CPU_OPTIONS"


@functools.cache
def compiler_options() -> dict[str, Any]:
    """``CPU_OPTIONS`` when the default backend is the CPU and this jaxlib accepts them;
    otherwise ``{}`` (GPU/TPU, an unknown option, or ``VITKD_XLA_CPU_OPTIONS=0``)."""
    if os.environ.get(OPT_OUT) == "0" or jax.default_backend() != "cpu":
        return {}
    unroll_threefry_on_cpu()
    try:  # A probe compile: a jaxlib that lacks an option rejects it here.
        jax.jit(jnp.matmul, compiler_options=CPU_OPTIONS).lower(
            jnp.zeros((8, 8)), jnp.zeros((8, 8))).compile()
    except Exception:  # noqa: BLE001 - any rejection means: compile with XLA's defaults.
        return {}
    return dict(CPU_OPTIONS)


# Threefry-2x32's rotation constants, used alternately by its five groups of four rounds.
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32_unrolled(key1, key2, count1, count2):
    """Threefry-2x32 with 20 rounds (Salmon et al., 2011; JAX's PRNG), every round written out.

    All arguments are uint32 arrays of one shape; returns the two uint32 output words.
    """
    keys = (key1, key2, key1 ^ key2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = count1 + keys[0], count2 + keys[1]
    for group in range(5):
        for rotation in _THREEFRY_ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation)))
        x0 = x0 + keys[(group + 1) % 3]
        x1 = x1 + keys[(group + 2) % 3] + np.uint32(group + 1)
    return x0, x1


@functools.cache
def unroll_threefry_on_cpu() -> bool:
    """Lowers ``threefry2x32`` on the CPU with its rounds unrolled; True once installed.

    Why: on the CPU (only) JAX lowers the threefry hash as a ``fori_loop`` over its five
    groups of rounds, which keeps compile times down but leaves XLA:CPU a while loop that makes
    a pass over the whole array per group. Unrolled, as JAX lowers it for GPU and TPU, XLA fuses
    the 20 rounds into one elementwise loop: 2.6M Bernoulli draws (the dropout masks of one
    digits-demo step) took 67-73 ms rolled and 4-6 ms unrolled, and the demo trained at about
    1,230 examples/s instead of 1,050 (docs/performance.md, 2026-11-29, with the commands).
    Same function, so the same bits: the trained models do not change
    (tests/trainer/test_xla_cpu.py compares them with JAX's own lowering).
    Process-wide; programs lowered before the call keep JAX's lowering. Uses
    ``jax.extend.random.threefry2x32_p`` and ``jax.interpreters.mlir``; a JAX without them
    keeps its own lowering.
    """
    try:
        from jax.extend.random import threefry2x32_p
        from jax.interpreters import mlir

        mlir.register_lowering(
            threefry2x32_p, mlir.lower_fun(_threefry2x32_unrolled, multiple_results=True),
            platform="cpu")
    except (ImportError, AttributeError, TypeError) as error:
        logging.warning("kept JAX's threefry lowering on the CPU: %s", error)
        return False
    return True
