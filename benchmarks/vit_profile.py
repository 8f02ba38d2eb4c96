"""Where the time of a ViT training step goes: a profile of one step, grouped by kind of op.

  python -m benchmarks.vit_profile --model=ViT-Ti_16 --batch_size=32 \\
      --out=benchmarks/results/vit_profile_cpu.json

Traces one compiled AdamW step (the step of ``benchmarks.vit_throughput``) with
``jax.profiler``, reads the trace's XLA op events and sorts each op by what its compiled HLO
computation does: ``matmul`` (a dot or convolution, with whatever XLA fused into it),
``transpose/copy``, ``reduction``, ``elementwise`` (loop fusions: softmax, GELU, LayerNorm,
AdamW), ``other``. Op events of independent ops overlap in time (XLA:CPU runs them
concurrently), so the table gives each kind's summed op time and its share of that sum; the
``busy`` and ``step`` figures say how much of the step any op was running. The top ops are
listed with their place in the model (``op_name`` metadata, layer numbers folded). Page
faults and kernel CPU time per step come from ``getrusage`` (``trainer.host_memory``).

The step is compiled with the launcher's options (``trainer.xla_cpu``): matmuls run in Eigen,
asynchronously on Eigen's threads, and their op events end before the work does, so the
``matmul`` row undercounts and part of the step shows no op running. ``--xla_defaults``
profiles the step compiled with XLA's defaults instead, whose YNNPACK matmuls are traced
whole. So the profile also times each of the step's matmuls alone (``--time_matmuls``,
benchmarks/step_matmuls.py) and measures the matmul peak of the MFU (trainer.throughput):
the matmuls' summed time is about what the step would take if all else were free, and the
step's FLOPs over that time the MFU it would then reach with these matmul kernels.
"""

from __future__ import annotations

from absl import app, flags

from benchmarks.common import environment, table, timed_calls, write_json
from benchmarks.step_matmuls import MATMUL_COLUMNS, matmuls_alone, matmuls_alone_summary
from benchmarks.step_profile import profile_step
from benchmarks.vit_steps import training_step
from trainer import host_memory

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "ViT-Ti_16", "A name from vit.VIT_VARIANTS.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("image_size", 224, "Square input resolution.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_integer("top", 15, "Ops to list by time.")
flags.DEFINE_bool("xla_defaults", False, "Compile with XLA's default options, not the "
                  "launcher's (trainer.xla_cpu): matmuls in YNNPACK, traced whole.")
flags.DEFINE_string("attention", "xla", "attention_implementation (xla or cudnn).")
flags.DEFINE_bool("time_matmuls", True, "Also time each of the step's matmuls alone and "
                  "measure the MFU's peak (benchmarks.step_matmuls).")
flags.DEFINE_string("keep_trace_in", None, "Directory for the raw trace and compiled HLO.")
flags.DEFINE_string("out", None, "JSON output path.")


def main(argv):
    del argv
    built = training_step(FLAGS.model, FLAGS.batch_size, FLAGS.image_size, FLAGS.precision,
                          FLAGS.attention, compiler_options={} if FLAGS.xla_defaults else None)
    # Page faults and kernel time before the trace: the first steps after it carry the
    # profiler's own kernel time (1.9 s a step against 0.2-0.4 s before or later, ViT-Ti/16).
    costs = timed_calls(built["run_step"], repeats=2, warmup=1)
    result = profile_step(built["run_step"], built["compiled_step"].as_text(), FLAGS.top,
                          FLAGS.keep_trace_in)
    result.update(page_faults=costs["page_faults"], system_cpu_s=costs["system_cpu_s"])
    print(f"{FLAGS.model}, batch {FLAGS.batch_size}: step {result['step_seconds']:.2f} s, "
          f"some op running {result['busy_seconds']:.2f} s, op time summed "
          f"{result['op_seconds']:.2f} s; {result['page_faults']:.0f} page faults and "
          f"{result['system_cpu_s']:.2f} s kernel CPU per step")
    print(table([dict(r, share=f"{r['share']:.1%}") for r in result["kinds"]],
                ["kind", "op_seconds", "share"]))
    print(table(result["top_ops"], ["kind", "op_seconds", "place"]))
    if FLAGS.time_matmuls:
        result["matmuls_alone"] = matmuls_alone(built, FLAGS.precision)
        print(matmuls_alone_summary(result["matmuls_alone"], result["step_seconds"]))
        print(table(result["matmuls_alone"]["rows"][:FLAGS.top], MATMUL_COLUMNS))
    # The options the step was compiled with: XLA's defaults ({}) under --xla_defaults.
    write_json(FLAGS.out, {"environment": environment(built["compiler_options"]), **result,
                           "command_flags": {k: getattr(FLAGS, k) for k in (
                               "model", "batch_size", "image_size", "precision", "top",
                               "xla_defaults", "attention", "time_matmuls")}})


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    app.run(main)
