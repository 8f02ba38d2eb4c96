"""Our ViT training step side by side with timm on PyTorch, alternated in one process.

  make bench-torch   # once: .venv-bench with this package, PyTorch and timm (never .venv)
  .venv-bench/bin/python -m benchmarks.vit_vs_timm --models=ViT-Ti_16 --batch_size=32 \\
      --rounds=5 --out=benchmarks/results/vit_vs_timm_cpu.json

Both sides train the same function (timm's ``vit_*_patch16_224`` at ``img_size``, checked
to have our parameter count, with the official ViT's tanh-approximate GELU, timm's
``act_layer="gelu_tanh"``), on the same random batch shape, with AdamW (lr 1e-3, weight
decay 0.05), softmax cross-entropy, no dropout, in the same precision (float32, or bfloat16
compute: our ``dtype`` / torch's CPU or CUDA autocast; float32 matmuls on a GPU in TF32 on
both sides, as JAX does by default, ``trainer.throughput.matmul_precision``). Our last block
computes only the class token the head reads (``skip_unread_tokens``, the same outputs, 7%
fewer FLOPs at ViT-Ti/16; docs/performance.md, change 5), where timm computes every token;
``--noskip_unread_tokens`` makes ours do timm's arithmetic too. Each round times
``--repeats`` steps of ours, then of timm's (medians); the table reports the median over
rounds and the ratio ours / timm in examples/s (> 1: ours is faster). Alternating keeps
drifts of the machine (clock, other load) from favouring either side. PyTorch runs eagerly as
timm's training scripts do; ``--torch_compile`` adds ``torch.compile``.

PyTorch and timm are imported here only, and only from ``main``: they are the optional
``bench-torch`` extra, never installed by ``make test`` or ``make demo``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax
from absl import app, flags

from benchmarks.common import environment, table, time_call, write_json
from benchmarks.vit_steps import training_step
from trainer import host_memory
from trainer.throughput import matmul_precision

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["ViT-Ti_16"], "Ours: ViT-Ti_16, ViT-S_16 or ViT-B_16.")
flags.DEFINE_integer("batch_size", 32, "Images per step.")
flags.DEFINE_integer("image_size", 224, "Square input resolution.")
flags.DEFINE_enum("precision", "float32", ["float32", "bfloat16"], "Computation dtype.")
flags.DEFINE_integer("rounds", 5, "Alternations of ours and timm's.")
flags.DEFINE_integer("repeats", 3, "Timed steps per side per round (median).")
flags.DEFINE_string("attention", "xla", "Ours: attention_implementation (xla or cudnn).")
flags.DEFINE_bool("skip_unread_tokens", True,
                  "Ours: the last block computes the class token alone (timm: every token).")
flags.DEFINE_bool("torch_compile", False, "Wrap timm's model in torch.compile.")
flags.DEFINE_string("out", None, "JSON output path.")

TIMM_NAMES = {"ViT-Ti_16": "vit_tiny_patch16", "ViT-S_16": "vit_small_patch16",
              "ViT-B_16": "vit_base_patch16", "ViT-L_16": "vit_large_patch16"}


def timm_training_step(name: str, batch_size: int, image_size: int, precision: str,
                       compile_model: bool = False) -> dict[str, Any]:
    """timm's model and a PyTorch AdamW step on random data: ``run_step`` and ``parameters``."""
    import timm
    import torch

    if name not in TIMM_NAMES:
        raise ValueError(f"--models={name!r} has no timm counterpart here; expected one of "
                         f"{sorted(TIMM_NAMES)}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # The official ViT's (and ours') tanh-approximate GELU: timm's default is the erf form.
    model = timm.create_model(f"{TIMM_NAMES[name]}_224", pretrained=False,
                              num_classes=1000, img_size=image_size, drop_rate=0.0,
                              drop_path_rate=0.0, act_layer="gelu_tanh").to(device).train()
    if device == "cuda" and precision == "float32":
        # JAX multiplies float32 matrices on a GPU in TF32 unless told otherwise; PyTorch in
        # full float32. The same on both sides: whatever JAX does here.
        tf32 = matmul_precision("float32", "gpu") == "tensorfloat32"
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
    parameters = sum(p.numel() for p in model.parameters())
    if compile_model:
        model = torch.compile(model)
    generator = torch.Generator().manual_seed(0)
    # NCHW, as timm's patch embedding (a strided convolution) expects.
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bfloat16")

    def run_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return {"run_step": run_step, "parameters": parameters, "torch": torch.__version__,
            "timm": timm.__version__, "torch_threads": torch.get_num_threads(),
            "torch_device": device,
            "torch_float32_matmul_precision": torch.get_float32_matmul_precision()}


def compare(name: str, batch_size: int, image_size: int, precision: str, rounds: int,
            repeats: int, compile_model: bool = False, attention: str = "xla",
            skip_unread_tokens: bool = True) -> dict[str, Any]:
    ours = training_step(name, batch_size, image_size, precision, attention,
                         model_overrides={"skip_unread_tokens": skip_unread_tokens})
    theirs = timm_training_step(name, batch_size, image_size, precision, compile_model)
    if ours["parameters"] != theirs["parameters"]:
        raise RuntimeError(f"{name}: {ours['parameters']:,} parameters here but "
                           f"{theirs['parameters']:,} in timm; the two are not the same model")
    theirs["run_step"]()  # timm's first step allocates the optimizer state
    ours_seconds, timm_seconds = [], []
    for _ in range(rounds):
        ours_seconds.append(time_call(ours["run_step"], repeats))
        timm_seconds.append(time_call(theirs["run_step"], repeats))
    ours_step, timm_step = statistics.median(ours_seconds), statistics.median(timm_seconds)
    return {
        "model": name, "batch_size": batch_size, "image_size": image_size,
        "precision": precision, "parameters": ours["parameters"],
        "ours_examples_per_sec": batch_size / ours_step,
        "timm_examples_per_sec": batch_size / timm_step,
        "ratio_ours_over_timm": timm_step / ours_step,
        "ours_tflops_per_sec": ours["train_flops"] / ours_step / 1e12,
        "ours_step_ms_per_round": [1000 * s for s in ours_seconds],
        "timm_step_ms_per_round": [1000 * s for s in timm_seconds],
        "torch": theirs["torch"], "timm": theirs["timm"],
        "torch_threads": theirs["torch_threads"], "torch_device": theirs["torch_device"],
        "torch_compile": compile_model, "attention": attention,
        "ours_skip_unread_tokens": skip_unread_tokens,
        "torch_float32_matmul_precision": theirs["torch_float32_matmul_precision"],
        "ours_fused_attention_calls": ours["train_fused_attention_calls"],
    }


def main(argv):
    del argv
    start = time.time()
    rows = []
    for name in FLAGS.models:
        row = compare(name, FLAGS.batch_size, FLAGS.image_size, FLAGS.precision, FLAGS.rounds,
                      FLAGS.repeats, FLAGS.torch_compile, FLAGS.attention,
                      FLAGS.skip_unread_tokens)
        rows.append(row)
        print(f"{name}: ours {row['ours_examples_per_sec']:.2f} img/s, timm "
              f"{row['timm_examples_per_sec']:.2f} img/s, ratio "
              f"{row['ratio_ours_over_timm']:.2f}", flush=True)
    print(table(rows, ["model", "batch_size", "precision", "ours_examples_per_sec",
                       "timm_examples_per_sec", "ratio_ours_over_timm"]))
    write_json(FLAGS.out, {
        "environment": environment(), "seconds": time.time() - start, "results": rows,
        "device": jax.devices()[0].device_kind,
        "command_flags": {k: getattr(FLAGS, k) for k in (
            "models", "batch_size", "image_size", "precision", "rounds", "repeats",
            "torch_compile", "attention", "skip_unread_tokens")}})


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    app.run(main)
