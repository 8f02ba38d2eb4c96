"""``XLA_FLAGS`` for the test processes and the JAX processes they start.

Tests compile far more than they run: most train a tiny model for a few steps, and XLA:CPU
spends most of a compile in LLVM, optimising the machine code of each fused loop (one LLVM
module per fusion). The tests therefore ask for LLVM's lowest optimisation level
(``--xla_backend_optimization_level=0``). Everything above the machine code is the product's:
the same HLO, the same fusions, the same library matmuls (Eigen, YNNPACK) and the launcher's
own compiler options. Only the fused loops' code is less optimised, so results can differ in
the last bits of a float32 reduction (a ViT's loss and 201 gradient arrays at level 0 against
the default: 199 arrays bitwise equal, the largest difference 9e-5 on a loss of 212).
Measured on the 2-core machine, 2026-12-01, `pytest -n 2` without and with the flag:
tests/vit/test_model.py and tests/transformer/test_model.py 208 s -> 129 s;
tests/trainer/test_launcher.py and tests/trainer/test_resume.py (launcher subprocesses)
151 s -> 125 s.

The tests that run the product as a user does, for long, keep XLA's defaults (running time
outweighs compiling there): the default experiment trained to its stated accuracy
(tests/trainer/test_digits_accuracy.py, 1,500 steps), the synthetic-task acceptance runs
(tests/trainer/test_synthetic_accuracy.py) and the notebooks. ``VITKD_TEST_XLA_OPT=default``
runs every test with XLA's defaults.
"""

from __future__ import annotations

import os

OPT_LEVEL_FLAG = "--xla_backend_optimization_level"
FAST_COMPILE = () if os.environ.get("VITKD_TEST_XLA_OPT") == "default" else (
    f"{OPT_LEVEL_FLAG}=0",)


def xla_flags(devices: int, fast_compile: bool = True) -> str:
    """``XLA_FLAGS`` for a test's JAX process with ``devices`` simulated CPU devices."""
    flags = f"--xla_force_host_platform_device_count={devices}"
    return with_fast_compile(flags) if fast_compile else flags


def with_fast_compile(flags: str) -> str:
    """``flags`` plus the tests' compile flag, unless they already set an optimisation
    level (a caller's choice wins)."""
    if OPT_LEVEL_FLAG in flags:
        return flags
    return " ".join((flags, *FAST_COMPILE)).strip()
