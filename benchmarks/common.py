"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from trainer import xla_cpu


def time_call(function: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``function()`` (outputs blocked on), after ``warmup`` calls."""
    return timed_calls(function, repeats, warmup)["seconds"]


def timed_calls(function: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of ``function()`` (outputs blocked on) after ``warmup`` calls, with the
    page faults and kernel (system) CPU seconds per timed call from ``getrusage``: what a
    fresh multi-GB buffer per call costs the host (trainer.host_memory)."""
    for _ in range(warmup):
        jax.block_until_ready(function())
    times = []
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"seconds": float(np.median(times)),
            "page_faults": (after.ru_minflt - before.ru_minflt) / repeats,
            "system_cpu_s": (after.ru_stime - before.ru_stime) / repeats}


def environment(compiler_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The machine and software of a run. ``compiler_options``: the XLA options its steps were
    compiled with (``benchmarks.vit_steps.training_step``'s ``compiler_options``; ``{}`` for
    XLA's defaults); by default the launcher's (``trainer.xla_cpu``)."""
    device = jax.devices()[0]
    if compiler_options is None:
        compiler_options = xla_cpu.compiler_options()
    return {
        "date": time.strftime("%Y-%m-%d"),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        # trainer.host_memory's restart sets glibc.malloc.hugetlb=1 here.
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
        # What the run's steps were compiled with.
        "xla_compiler_options": dict(compiler_options),
    }


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    widths = [max([len(c), *(len(_fmt(r.get(c))) for r in rows)]) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(_fmt(row.get(c)).rjust(w)
                               for c, w in zip(columns, widths, strict=True)))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    return str(value)
