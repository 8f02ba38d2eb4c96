"""Evaluate parameters without training: a run's checkpoint, or an official ViT ``.npz``.

  python -m trainer.evaluate --workdir=DIR [--step=S] [--ema | --average_last=N] [--out=F]
  python -m trainer.evaluate --config=configs/vit_finetune.py:cifar10 \\
      --config.init_checkpoint=/path/to/ViT-B_16.npz [--out=F]

Runs the config's evaluation split through the task's own evaluation (the metrics a training
run logs as ``eval/*``: loss, accuracies, BLEU) and prints them as JSON; ``--out`` also
writes them to a file. With ``--workdir`` the config is the run's ``config.json`` unless
``--config`` is given (to point at data on another machine, say, or another split with
``--config.dataset.eval_split=...``), and the parameters are its newest checkpoint (``--step``
for another; ``--ema`` for the moving average; ``--average_last=N`` for the mean of the newest
N). Without ``--workdir``, a classification config's ``init_checkpoint`` is evaluated as it
is: its head must fit ``model.num_classes`` (an ImageNet-fine-tuned checkpoint on ImageNet),
where training would replace it. As timm's ``validate.py`` and the official ViT notebook do.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging

from trainer import checkpointing, host_memory, partitioning, xla_cpu


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """A training run's config, as it saved it in ``workdir/config.json``."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: is {workdir!r} a training workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def check_checkpoint_choice(step: int | None, ema: bool, average_last: int) -> None:
    """Raises ``ValueError`` for a choice of a run's parameters that ``run_params`` cannot
    read; callers that read other files first (``trainer.generate``) call it before them."""
    if (not isinstance(average_last, numbers.Integral) or isinstance(average_last, bool)
            or average_last < 1):
        raise ValueError(f"average_last={average_last!r} (--average_last) must be an integer "
                         ">= 1: the number of newest checkpoints averaged")
    if average_last != 1 and (ema or step is not None):
        raise ValueError(f"average_last={average_last} (--average_last) averages the newest "
                         "checkpoints' parameters: it cannot be combined with --ema or --step")


def run_params(workdir: str, step: int | None = None, ema: bool = False,
               average_last: int = 1) -> tuple[Any, str, int]:
    """The parameters of a run's checkpoint as numpy, words saying which ones, and the step
    of the checkpoint read (of an average, the newest)."""
    check_checkpoint_choice(step, ema, average_last)
    if average_last > 1:
        steps = checkpointing.checkpoint_steps(workdir)
        if len(steps) < average_last:
            raise ValueError(f"average_last={average_last} (--average_last), but {workdir} "
                             f"holds the checkpoints {steps} only")
        steps = steps[-average_last:]
        return (checkpointing.average_params(workdir, steps),
                f"the mean of the checkpoints at steps {steps} of {workdir}", steps[-1])
    params, found, _ = checkpointing.restore_params_with_meta(workdir, step, ema)
    what = "the moving average of the parameters" if ema else "the parameters"
    return params, f"{what} of the checkpoint at step {found} of {workdir}", found


def evaluate_run(workdir: str, config: ml_collections.ConfigDict | None = None,
                 step: int | None = None, ema: bool = False,
                 average_last: int = 1) -> tuple[dict[str, float], str]:
    """``(eval metrics, words saying which parameters)`` of a run's checkpoint (see
    ``run_params``), with ``config`` or the run's own.

    The task's frozen variables are those the checkpoint was trained with: a distillation
    student's teacher at the step recorded in the checkpoint, not the teacher run's newest
    (which may have trained on since), as a resumed run would have them.
    """
    from trainer.tasks import create_task

    config = config or load_run_config(workdir)
    params, source, found = run_params(workdir, step, ema, average_last)
    task = create_task(config)
    frozen = task.resumed_frozen_variables(checkpointing.read_meta(workdir, found))
    return evaluate_params(config, params, task, frozen), source


def init_checkpoint_params(config: ml_collections.ConfigDict, task: Any) -> tuple[Any, str]:
    """``config.init_checkpoint`` (an official-layout ViT ``.npz``) for ``task``'s model as it
    is: a head that does not fit is refused, not replaced by a new one."""
    import vit
    from trainer.tasks.classification import checkpoint_grid

    path = config.get("init_checkpoint")
    if not path:
        raise ValueError("nothing to evaluate: give --workdir=DIR (a run's checkpoint) or a "
                         "config with config.init_checkpoint=FILE.npz")
    if config.task != "classification":
        raise ValueError(f"config.init_checkpoint is evaluated for config.task="
                         f"'classification' only, not {config.task!r}; evaluate a run's "
                         "checkpoint with --workdir")
    grid = checkpoint_grid(config.get("init_checkpoint_grid"), "config.init_checkpoint_grid")
    params = vit.load_pretrained(path, task.model, checkpoint_grid=grid, allow_new_head=False)
    return params, f"config.init_checkpoint={path}"


def evaluate_params(config: ml_collections.ConfigDict, params: Any, task: Any = None,
                    frozen: Any = None) -> dict[str, float]:
    """The ``eval/*`` metrics of ``params`` on ``config``'s evaluation split, over every
    device and host (the parameters placed as training places them). ``frozen``: the task's
    frozen variables (a distillation teacher), by default ``task.frozen_variables()``."""
    from trainer.steps import make_eval_step
    from trainer.tasks import create_task
    from trainer.train import evaluate_with_generation

    task = task or create_task(config)
    mesh = partitioning.make_mesh(dict(config.mesh_shape))
    partitioning.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    abstract = jax.eval_shape(lambda: task.init_params(jax.random.key(0),
                                                       task.dummy_batch(mesh.devices.size)))
    expected = checkpointing.params_fingerprint(abstract)
    found = checkpointing.params_fingerprint(params)
    if found != expected:
        raise checkpointing.CheckpointMismatchError(
            "the parameters do not fit the config's model: "
            + checkpointing.describe_mismatch(found, expected))
    shardings = partitioning.state_shardings(abstract, mesh, config.sharding.min_fsdp_size)
    eval_step = jax.jit(make_eval_step(task),
                        in_shardings=(shardings, partitioning.batch_sharding(mesh),
                                      partitioning.replicated(mesh)),
                        out_shardings=partitioning.replicated(mesh),
                        compiler_options=xla_cpu.compiler_options())
    frozen = task.frozen_variables() if frozen is None else frozen
    frozen = jax.device_put(frozen, partitioning.replicated(mesh))
    return evaluate_with_generation(task, eval_step, jax.device_put(params, shardings), frozen,
                                    mesh, jax.process_index(), jax.process_count())


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    partitioning.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    from trainer.tasks import create_task

    if FLAGS.workdir:
        config = FLAGS.config or load_run_config(FLAGS.workdir)
        metrics, source = evaluate_run(FLAGS.workdir, config, FLAGS.step, FLAGS.ema,
                                       FLAGS.average_last)
    else:
        if FLAGS.config is None:
            raise app.UsageError("give --workdir=DIR, or --config=FILE with "
                                 "--config.init_checkpoint=FILE.npz")
        if FLAGS.ema or FLAGS.step is not None or FLAGS.average_last != 1:
            raise app.UsageError("--ema, --step and --average_last read a run's checkpoints: "
                                 "they need --workdir")
        config, task = FLAGS.config, create_task(FLAGS.config)
        params, source = init_checkpoint_params(config, task)
        metrics = evaluate_params(config, params, task)
    result = {"parameters": source, "dataset": config.dataset.name,
              "split": config.dataset.eval_split, **metrics}
    if jax.process_index() == 0:
        text = json.dumps(result, indent=2)
        print(text, file=sys.stdout, flush=True)
        if FLAGS.out:
            with open(FLAGS.out, "w") as f:
                f.write(text + "\n")


def _define_flags() -> None:
    """Defined only when run as a program: ``workdir`` and ``config`` are also flags of
    ``trainer.generate`` and ``trainer.main``, which tests import into one process."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file (default: the run's "
                                    "config.json with --workdir).", lock_config=True)
    flags.DEFINE_string("workdir", None, "A training run's directory.")
    flags.DEFINE_integer("step", None, "The checkpoint's step (default: the newest).")
    flags.DEFINE_bool("ema", False, "Evaluate the checkpoint's moving average "
                      "(config.ema_decay).")
    flags.DEFINE_integer("average_last", 1, "Evaluate the mean of the newest N checkpoints.",
                         lower_bound=1)
    flags.DEFINE_string("out", None, "Also write the metrics to this JSON file.")
    flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
    flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    _define_flags()
    app.run(main)
