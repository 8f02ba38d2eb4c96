"""Memory of a ViT training step: with and without rematerialisation, with gradient
accumulation, and the largest batch that fits a memory budget.

  python -m benchmarks.vit_memory --model=ViT-B_16 --batch_size=64 --budget_gb=16 \
      --out=benchmarks/results/vit_memory_cpu.json

The step is the launcher's own (``trainer.steps.make_train_step`` on the classification task,
AdamW from ``trainer.optimizers``, the train state donated), compiled for abstract inputs:
nothing runs, so a laptop can study batch sizes of a bigger machine's shapes. Memory is XLA's
memory analysis of the compiled step for this backend: arguments + outputs + temporaries −
donated buffers that outputs reuse. Buffer assignment differs between backends (a GPU fuses
and schedules differently from a CPU), so the figures are for the backend that ran the
command; on a GPU the budget defaults to the device's ``bytes_limit``.

Variants (``--variants``): ``baseline`` (no remat), ``remat_full`` (every block recomputed in
the backward pass: ``jax.checkpoint`` saving nothing), ``remat_dots`` (matmul outputs saved,
the rest recomputed), and ``accum4`` (the batch in 4 micro-batches of one update,
``optimizer.accum_steps=4``); ``scan``, ``scan_remat_full`` and ``scan_remat_dots``: the same
with the blocks under one ``nn.scan`` (``model.scan_layers=True``). Largest batch:
``largest_batch`` (an affine prediction from two compiles, then galloping and bisection over
multiples of ``--batch_multiple``).

On the CPU backend remat saves memory only with ``scan_layers``. Without it, XLA's analysis
reports the same memory with and without remat (measured 2026-11-28 on ViT-micro, 3 and 6
layers: identical temporaries, growing with depth in both), although the step does recompute
(2026-11-29, ViT-Ti/16 cut to 3 layers, batch 16, one-off script: 98 dots in the compiled
remat_full step against 77 without remat): XLA:CPU drops the optimization barriers that keep
the recomputation in the backward pass (ViT-micro's remat_full step: 2 in the lowered program,
none compiled) and may schedule it early, so the activations stay live all the same (with
``xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED`` the temporaries shrink, baseline
188 MiB, and remat still saves nothing, remat_full 193). Under ``nn.scan`` the recomputation is
inside the backward loop's body, where it cannot move: ViT-B/16 at batch 16, 2026-11-29
(one-off script calling ``benchmarks.step_memory.step_memory_bytes``): scan 5,873 MiB,
scan_remat_dots 3,064 MiB, scan_remat_full 1,799 MiB, against 4,186 MiB for baseline. GPU/TPU
were not measured here (no such device in this project's CI).
"""

from __future__ import annotations

import time

import jax
from absl import app, flags

from benchmarks.batch_search import largest_batch
from benchmarks.common import environment, table, write_json
from benchmarks.step_memory import VARIANTS, step_config, step_memory_bytes

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "ViT-B_16", "A name from vit.VIT_VARIANTS.")
flags.DEFINE_integer("batch_size", 64, "The batch whose memory is reported for every variant.")
flags.DEFINE_integer("image_size", 224, "Square input resolution.")
flags.DEFINE_list("variants", list(VARIANTS), "Which variants to compile.")
flags.DEFINE_float("budget_gb", None, "Memory budget for the largest batch (GiB); default: "
                   "the device's bytes_limit (GPU/TPU), 16 on CPU.")
flags.DEFINE_integer("batch_multiple", 8, "Largest batches are multiples of this.")
flags.DEFINE_bool("mixed_precision", False, "bfloat16 computation.")
flags.DEFINE_string("out", None, "JSON output path.")


def default_budget() -> tuple[int, str]:
    if FLAGS.budget_gb is not None:
        return int(FLAGS.budget_gb * 2**30), "--budget_gb"
    stats = jax.devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]), "device bytes_limit"
    return 16 * 2**30, "CPU default (16 GiB)"


def main(argv):
    del argv
    start = time.time()
    budget, budget_source = default_budget()
    rows = []
    for variant in FLAGS.variants:
        config = step_config(FLAGS.model, FLAGS.image_size, variant, FLAGS.mixed_precision)
        memory = step_memory_bytes(config, FLAGS.batch_size)
        largest, seen = largest_batch(
            lambda batch, config=config: step_memory_bytes(config, batch), budget,
            FLAGS.batch_multiple)
        rows.append({
            "variant": variant, "model": FLAGS.model, "image_size": FLAGS.image_size,
            "batch_size": FLAGS.batch_size, "memory_gib": memory / 2**30,
            "largest_batch": largest, "compiled_batches": {str(k): v for k, v in seen.items()},
        })
        print(f"{variant}: {memory / 2**30:.2f} GiB at batch {FLAGS.batch_size}; largest "
              f"batch within {budget / 2**30:.1f} GiB: {largest}", flush=True)
    print(table(rows, ["variant", "batch_size", "memory_gib", "largest_batch"]))
    write_json(FLAGS.out, {
        "environment": environment(), "seconds": time.time() - start,
        "budget_gib": budget / 2**30, "budget_source": budget_source,
        "memory_source": "XLA memory analysis of the compiled step", "results": rows,
        "command_flags": {k: getattr(FLAGS, k) for k in (
            "model", "batch_size", "image_size", "variants", "budget_gb", "batch_multiple",
            "mixed_precision")}})


if __name__ == "__main__":
    app.run(main)
