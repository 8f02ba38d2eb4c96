"""Size, speed and accuracy of teacher and student: the compression report of a distillation run.

FLOPs come from XLA's cost analysis of the lowered forward pass (``trainer.throughput``'s
``lowered_flops``, the count behind MFU: what the program asks of the hardware, not a formula);
a scanned layer stack is counted as its unrolled equivalent, since the cost analysis counts a
loop's body once. Latency is the median wall time of repeated jitted calls at a fixed batch,
measured after compilation and a warm-up call. Every model is measured on one device, with its
parameters and inputs there: a student in the train state's FSDP sharding and a replicated
teacher are then counted and timed alike.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from trainer import throughput, xla_cpu


def forward_flops(model: Any, params: Any, inputs: Any) -> float:
    """FLOPs of one ``model.apply({"params": params}, inputs, train=False)``.

    ``params`` and ``inputs`` may be arrays or ``jax.ShapeDtypeStruct``s. A model with
    ``scan_layers`` is counted as its unscanned clone: XLA's cost analysis counts a loop's body
    once (a 4-layer scanned stack read as 1 layer), and ``throughput.lowered_flops`` refuses
    such a program. The clone's parameters are only shapes (``jax.eval_shape`` of its ``init``),
    which is all a FLOP count needs. A scanned stack cannot cut its last block short, so the
    clone computes every token too (``skip_unread_tokens=False``): the same arithmetic.
    """
    if getattr(model, "scan_layers", False):
        fields = {"scan_layers": False}
        if hasattr(model, "skip_unread_tokens"):
            fields["skip_unread_tokens"] = False
        model = model.clone(**fields)
        params = jax.eval_shape(lambda x: model.init(jax.random.key(0), x)["params"], inputs)

    def forward(p, x):
        return model.apply({"params": p}, x, train=False)

    return throughput.lowered_flops(jax.jit(forward), params, inputs)


def measure_forward(model: Any, params: Any, images: Any, repeats: int = 10) -> dict:
    """Parameters, FLOPs per example, latency (ms per batch) and throughput (examples/s).

    Parameters and inputs are moved to this process's first device beforehand: an FSDP-sharded
    student would otherwise run (and be timed) on several devices while a replicated teacher
    runs on one, and a numpy input would be copied to the device inside every timed call.
    """
    device = jax.local_devices()[0]
    params, images = jax.device_put((params, images), device)

    def forward(p, x):
        return model.apply({"params": p}, x, train=False)

    run = jax.jit(forward, compiler_options=xla_cpu.compiler_options())  # as the launcher
    jax.block_until_ready(run(params, images))  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(params, images))
        times.append(time.perf_counter() - start)
    latency = float(np.median(times))
    batch = images.shape[0]
    return {
        "parameters": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
        "flops_per_example": forward_flops(model, params, images) / batch,
        "batch_size": batch,
        "latency_ms_per_batch": 1000.0 * latency,
        "examples_per_sec": batch / latency,
    }


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    columns = ["parameters", "flops_per_example", "latency_ms_per_batch", "examples_per_sec",
               "accuracy"]
    header = f"{'model':<10}" + "".join(f"{c:>22}" for c in columns)
    lines = [header, "-" * len(header)]
    for name, row in rows.items():
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append(f"{'-' if value is None else format(value, ',.4g'):>22}")
        lines.append(f"{name:<10}" + "".join(cells))
    return "\n".join(lines)


def write_report(workdir: str, models: dict[str, tuple], images: np.ndarray,
                 final_eval: dict[str, float],
                 quality: dict[str, float | None] | None = None) -> dict[str, Any]:
    """Measures each ``name: (model, params[, inputs])``, adds accuracies from ``final_eval``
    and the task's other ``quality`` figures, prints a table and writes
    ``workdir/compression_report.json``. ``images`` are the inputs of the forward pass (token
    ids for text encoders)."""
    rows = {}
    for name, entry in models.items():
        model, params = entry[0], entry[1]
        rows[name] = measure_forward(model, params, entry[2] if len(entry) > 2 else images)
    rows["student"]["accuracy"] = final_eval.get("eval/accuracy")
    if "teacher" in rows:
        rows["teacher"]["accuracy"] = final_eval.get("eval/teacher_accuracy")
    report = {
        "models": rows,
        "top1_agreement": final_eval.get("eval/agreement"),
        "device": jax.devices()[0].device_kind,
    }
    if quality:
        report["quality"] = quality
    if "teacher" in rows:
        report["compression"] = {
            "parameters": rows["teacher"]["parameters"] / rows["student"]["parameters"],
            "flops": rows["teacher"]["flops_per_example"]
            / max(rows["student"]["flops_per_example"], 1.0),
            "speedup": rows["student"]["examples_per_sec"]
            / rows["teacher"]["examples_per_sec"],
        }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "compression_report.json"), "w") as f:
            json.dump(report, f, indent=2)
        print("compression report:\n" + format_table(rows), flush=True)
        if report.get("top1_agreement") is not None:
            print(f"top-1 agreement student/teacher: {report['top1_agreement']:.4f}", flush=True)
        for name, value in (quality or {}).items():
            if value is not None:
                print(f"{name}: {value:.4f}", flush=True)
    return report
