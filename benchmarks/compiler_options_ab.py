"""XLA compiler options A/B: the same ViT training step compiled with each set of options,
timed in alternating rounds in one process.

  python -m benchmarks.compiler_options_ab --model=ViT-Ti_16 --batch_size=32 --rounds=5 \\
      --out=benchmarks/results/compiler_options_ab_cpu.json

On a noisy machine two processes cannot be compared to a few percent; alternating in one
process can. Even so, the variant timed first in a round was measured up to 8% slower than an
identical second one (2026-11-29, ViT-Ti/16), so every variant is compiled and timed twice
(``a``, ``b``): two copies of one variant that differ show how far to trust a difference
between variants. Variants (``--variants``, JSON: name -> options) default to XLA's defaults
against the launcher's options (trainer.xla_cpu). ``--model_variants`` (JSON: name ->
``vit.VisionTransformer`` fields) instead A/Bs the model's own switches, all compiled with
the launcher's options, e.g. the last block computing only the class token or every token:

  python -m benchmarks.compiler_options_ab --model=ViT-Ti_16 --batch_size=32 --rounds=5 \
      --model_variants='{"skip_unread": {}, "every_token": {"skip_unread_tokens": false}}'
"""

from __future__ import annotations

import json
import statistics

from absl import app, flags

from benchmarks.common import environment, table, time_call, write_json
from benchmarks.vit_steps import training_step
from trainer import host_memory, xla_cpu

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "ViT-Ti_16", "A name from vit.VIT_VARIANTS.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("image_size", 224, "Square input resolution.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_integer("rounds", 5, "Alternating rounds.")
flags.DEFINE_integer("repeats", 2, "Timed steps of each copy per round (median).")
flags.DEFINE_string("variants", None, "JSON object: variant name -> XLA compiler options; "
                    "default: XLA's defaults and the launcher's options.")
flags.DEFINE_string("model_variants", None, "JSON object: variant name -> "
                    "vit.VisionTransformer field overrides, each compiled with the launcher's "
                    "options; not together with --variants.")
flags.DEFINE_string("out", None, "JSON output path.")


def _variants() -> dict[str, tuple[dict, dict]]:
    """Variant name -> (compiler options, model field overrides)."""
    if FLAGS.variants and FLAGS.model_variants:
        raise app.UsageError("--variants and --model_variants are exclusive: pass one")
    if FLAGS.model_variants:
        return {name: (xla_cpu.compiler_options(), overrides)
                for name, overrides in json.loads(FLAGS.model_variants).items()}
    options = (json.loads(FLAGS.variants) if FLAGS.variants else
               {"xla_defaults": {}, "launcher": xla_cpu.compiler_options()})
    return {name: (opts, {}) for name, opts in options.items()}


def main(argv):
    del argv
    variants = _variants()
    steps, train_flops = {}, {}
    for copy in ("a", "b"):
        for name, (options, overrides) in variants.items():
            built = training_step(FLAGS.model, FLAGS.batch_size, FLAGS.image_size,
                                  FLAGS.precision, compiler_options=options,
                                  model_overrides=overrides)
            steps[f"{name} {copy}"], train_flops[name] = built["run_step"], built["train_flops"]
    seconds = {label: [] for label in steps}
    for _ in range(FLAGS.rounds):
        for label, run_step in steps.items():
            seconds[label].append(time_call(run_step, FLAGS.repeats))
    first = next(iter(variants))
    baseline = statistics.median(seconds[f"{first} a"] + seconds[f"{first} b"])
    rows = []
    for label, per_round in seconds.items():
        name, copy = label.rsplit(" ", 1)
        step = statistics.median(per_round)
        options, overrides = variants[name]
        rows.append({"variant": name, "copy": copy, "options": options,
                     "model_overrides": overrides, "train_flops": train_flops[name],
                     "step_seconds": step, "examples_per_sec": FLAGS.batch_size / step,
                     f"speedup_over_{first}": baseline / step,
                     "step_seconds_per_round": per_round})
    print(table(rows, ["variant", "copy", "step_seconds", "examples_per_sec",
                       f"speedup_over_{first}"]))
    write_json(FLAGS.out, {"environment": environment(), "results": rows,
                           "command_flags": {k: getattr(FLAGS, k) for k in (
                               "model", "batch_size", "image_size", "precision", "rounds",
                               "repeats", "variants", "model_variants")}})


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    app.run(main)
