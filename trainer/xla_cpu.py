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
"""

from __future__ import annotations

import functools
import os
from typing import Any

import jax
import jax.numpy as jnp

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
    try:  # A probe compile: a jaxlib that lacks an option rejects it here.
        jax.jit(jnp.matmul, compiler_options=CPU_OPTIONS).lower(
            jnp.zeros((8, 8)), jnp.zeros((8, 8))).compile()
    except Exception:  # noqa: BLE001 - any rejection means: compile with XLA's defaults.
        return {}
    return dict(CPU_OPTIONS)
