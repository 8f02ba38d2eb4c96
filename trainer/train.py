"""The training loop shared by every task.

config -> mesh over all devices of all hosts -> host-local batches placed as one global
sharded array -> one jitted step (loss, gradients, optax update) -> metrics and orbax
checkpoints in the workdir. Restarting the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from trainer import checkpointing, config_validation, partitioning, throughput, xla_cpu
from trainer.metrics import (
    AVERAGED_PREFIX,
    EMA_PREFIX,
    MetricWriter,
    eval_history,
    improve_best_eval,
    truncate_metrics,
)
from trainer.optimizers import make_optimizer
from trainer.steps import init_state, make_eval_step, make_train_step
from trainer.tasks import create_task
from trainer.workdir_lock import WorkdirLock


class NonFiniteLossError(FloatingPointError):
    """The training loss or the updated parameters became NaN or Inf."""


class _PreemptionFlag:
    """Set by SIGTERM; the loop saves a checkpoint and exits at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook worker): no handler
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint before exiting")
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def anywhere(self) -> bool:
        """True if any host was asked to stop (all hosts must stop at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([self.requested]))
        return bool(np.any(flags))


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _host_scalars(metric_list: list[dict[str, jax.Array]], first_step: int) -> dict[str, float]:
    """The metrics of the newest step; raises on the first non-finite loss or state.

    ``metric_list[i]`` holds the metrics of step ``first_step + i + 1``: the loss of the
    parameters before that step's update and the count of non-finite values in the updated
    parameters and optimizer state (``trainer.steps``). Checking both before a save means a
    checkpoint never holds the state of an update that overflowed, even when the loss that
    preceded it was finite.
    Logged values are those of the logged step, not averages over the interval, so a
    resumed run logs exactly what an uninterrupted one does.
    """
    values = jax.device_get(metric_list)
    advice = ("stopping (the last good checkpoint is kept). Lower the learning rate, enable "
              "grad_clip_norm, or check the data.")
    for offset, metrics in enumerate(values):
        step = first_step + offset + 1
        if not np.isfinite(metrics["loss"]):
            raise NonFiniteLossError(f"training loss is {metrics['loss']} at step {step}; "
                                     + advice)
        if metrics["nonfinite_state"]:
            raise NonFiniteLossError(
                f"the parameters and optimizer state after the update of step {step} hold "
                f"{int(metrics['nonfinite_state'])} NaN/Inf values (the loss before the update "
                f"was {metrics['loss']:.4g}); " + advice)
    # Zero whenever a step is logged; the check above is its only use.
    return {f"train/{k}": float(v) for k, v in values[-1].items() if k != "nonfinite_state"}


def evaluate(task, eval_step, params, frozen, mesh, process_index, process_count) -> dict:
    """Metrics over the whole eval split (padded last batch masked out) on every host."""
    totals: dict[str, np.ndarray] = {}
    for batch in task.eval_batches(process_index, process_count):
        task.check_batch(batch, "eval batch")
        sums = eval_step(params, partitioning.global_batch(batch, mesh), frozen)
        for name, value in jax.device_get(sums).items():
            totals[name] = totals.get(name, 0.0) + np.asarray(value, np.float64)
    return {f"eval/{k}": float(v[0] / max(v[1], 1.0)) for k, v in totals.items()}


def evaluate_with_generation(task, eval_step, params, frozen, mesh, process_index,
                             process_count) -> dict:
    """``evaluate``'s metrics and the task's generation metrics (BLEU), as ``eval/*``."""
    metrics = evaluate(task, eval_step, params, frozen, mesh, process_index, process_count)
    metrics.update({f"eval/{k}": v for k, v in task.generation_metrics(
        params, frozen, mesh, process_index, process_count).items()})
    return metrics


def _evaluate_average(checkpointer, last, writer, task, eval_step, shardings, frozen,
                      mesh) -> dict[str, float]:
    """``config.average_last_checkpoints``: the evaluation, as ``eval_averaged/<metric>``, of
    the mean parameters of the newest ``last`` checkpoints (the final one included, already
    written), with ``eval_averaged/num_checkpoints``, how many were averaged.

    Nothing is evaluated when the run kept fewer than two checkpoints: the average of one is
    the final model, already evaluated.
    """
    steps = checkpointer.all_steps()[-last:]
    if len(steps) < last:
        writer.text(f"config.average_last_checkpoints={last}, but the workdir holds only the "
                    f"checkpoints {steps}: averaging those")
    if len(steps) < 2:
        return {}
    params = jax.device_put(checkpointing.average_params(checkpointer.workdir, steps),
                            shardings.params)
    averaged = evaluate_with_generation(task, eval_step, params, frozen, mesh,
                                        jax.process_index(), jax.process_count())
    writer.text(f"evaluated the average of the checkpoints at steps {steps}")
    return {**_renamed(AVERAGED_PREFIX, averaged),
            AVERAGED_PREFIX + "num_checkpoints": float(len(steps))}


def _renamed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """``eval/<name>`` -> ``<prefix><name>``: the evaluation of other parameters than the
    trained ones (an average), apart from ``eval/*``, whose history the best values follow."""
    return {prefix + key.removeprefix("eval/"): value for key, value in metrics.items()}


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _start_from(pretrained: Any, initial: Any, shardings: Any, fingerprint: dict) -> Any:
    """``initial`` with the top-level entries of ``pretrained`` in place of its own (entries
    the task does not provide, e.g. a distillation projection, keep their initialisation);
    raises naming what differs when the result does not fit the model."""
    merged = checkpointing.params_fingerprint({**initial, **pretrained})
    if merged != fingerprint:
        raise ValueError(
            "the pretrained parameters (config.init_checkpoint or the task's initialisation) "
            "do not fit the model: " + checkpointing.describe_mismatch(merged, fingerprint,
                                                                       ours="model"))
    return {**initial, **jax.device_put(pretrained, {k: shardings[k] for k in pretrained})}


def _pretrained_state(state: Any, pretrained: Any, tx: Any, shardings: Any,
                      fingerprint: dict) -> Any:
    """``state`` starting from ``pretrained`` (see ``_start_from``): a fresh optimizer state
    and, when the state keeps a moving average, the average starting at the same parameters
    in buffers of its own (the train step donates the state, and one buffer cannot be donated
    twice)."""
    params = _start_from(pretrained, state.params, shardings.params, fingerprint)
    state = state.replace(params=params, opt_state=jax.jit(
        tx.init, out_shardings=shardings.opt_state)(params))
    if state.ema_params is not None:
        state = state.replace(ema_params=jax.jit(
            lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings.ema_params)(params))
    return state


def model_flops_per_step(config, tx, schedule, train_step, state, batch, frozen) -> float:
    """The model FLOPs of one call of ``train_step(state, batch, frozen)``, for ``train/mfu``.

    A config with a scanned stack, gradient accumulation or rematerialisation is counted on
    the same step without them (``throughput.counting_config``), lowered on shapes only.
    Raises ``throughput.LoopInProgramError`` when a loop remains (e.g. a scanned teacher).
    """
    counting = throughput.counting_config(config)
    if counting is None:
        # Lowering is traced once and reused by the training step's first call.
        return throughput.lowered_flops(train_step, state, batch, frozen)
    task = create_task(counting)
    ema_decay = _ema_decay(config)
    abstract = jax.eval_shape(lambda: init_state(task, tx, counting.seed, task.dummy_batch(1),
                                                 ema=ema_decay > 0))
    return throughput.lowered_flops(jax.jit(make_train_step(task, tx, schedule, 1, ema_decay)),
                                    abstract, _shapes(batch), _shapes(frozen))


def _ema_decay(config: Any) -> float:
    """``config.ema_decay`` (0: no parameter average)."""
    return float(config.get("ema_decay", 0.0))


def train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
    """Trains ``config``'s task in ``workdir``; returns the final summary.

    Resumes from the newest checkpoint in ``workdir`` when there is one. Process 0 holds the
    workdir's lock for the whole run, so a second run on the same workdir is refused.
    """
    config_validation.validate(config)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() != 0:
        return _train_and_evaluate(config, workdir)
    with WorkdirLock(workdir):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: Any, workdir: str) -> dict[str, Any]:
    process_index, process_count = jax.process_index(), jax.process_count()
    # First: on the CPU this also installs the PRNG lowering (xla_cpu) before anything compiles.
    compiler_options = xla_cpu.compiler_options()
    mesh = partitioning.make_mesh(dict(config.mesh_shape))
    partitioning.check_batch_size(config.batch_size, mesh, "batch_size")
    partitioning.check_batch_size(config.eval_batch_size, mesh, "eval_batch_size")
    accum_steps = int(config.optimizer.get("accum_steps", 1))
    if config.batch_size % (accum_steps * mesh.devices.size):
        # validate() checked accum_steps alone; each micro-batch must also split over the
        # devices, as trainer.steps takes every device's micro-batch rows from its own shard.
        raise ValueError(
            f"config.batch_size={config.batch_size} must be a multiple of "
            f"config.optimizer.accum_steps={accum_steps} × {mesh.devices.size} devices "
            f"= {accum_steps * mesh.devices.size}: the micro-batches each split over the devices")

    for warning in config_validation.backend_warnings(config, jax.default_backend()):
        logging.warning(warning)
    task = create_task(config)
    total_steps = int(config.num_train_steps)
    tx, schedule = make_optimizer(config, total_steps)
    frozen = task.frozen_variables()

    dummy = task.dummy_batch(mesh.devices.size)
    ema_decay = _ema_decay(config)
    abstract = jax.eval_shape(lambda: init_state(task, tx, config.seed, dummy,
                                                 ema=ema_decay > 0))
    shardings = partitioning.state_shardings(abstract, mesh, config.sharding.min_fsdp_size)
    batch_sharding = partitioning.batch_sharding(mesh)
    replicated = partitioning.replicated(mesh)
    fingerprint = checkpointing.params_fingerprint(abstract.params)

    train_iter = iter(task.train_iterator(process_index, process_count))
    checkpointer = checkpointing.Checkpointer(
        workdir, keep=config.keep_checkpoints, async_save=config.get("async_checkpoints", True))
    restored = checkpointer.restore_latest(
        checkpointing.abstract_with_shardings(abstract, shardings), train_iter, fingerprint)
    if restored is None:
        state = jax.jit(lambda: init_state(task, tx, config.seed, dummy, ema=ema_decay > 0),
                        out_shardings=shardings)()
        # Shapes only: with FSDP over several hosts no process can read every parameter.
        pretrained = task.pretrained_params(abstract.params)
        if pretrained is not None:
            state = _pretrained_state(state, pretrained, tx, shardings, fingerprint)
        start_step = 0
        truncate_metrics(workdir, 0)
    else:
        state, restored_meta = restored
        frozen = task.resumed_frozen_variables(restored_meta)
        start_step = int(jax.device_get(state.step))
        if start_step > total_steps:
            checkpointer.close()
            raise ValueError(
                f"the checkpoint in {workdir} is at step {start_step}, past "
                f"config.num_train_steps={total_steps}: use another workdir, or set "
                f"num_train_steps >= {start_step}")
        truncate_metrics(workdir, start_step)
        finished_summary = _finished_summary(workdir, start_step, total_steps)
        if finished_summary is not None:
            checkpointer.close()
            return finished_summary

    frozen = jax.device_put(frozen, replicated)
    train_step = jax.jit(
        make_train_step(task, tx, schedule, accum_steps, ema_decay),
        in_shardings=(shardings, batch_sharding, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=(0,),
        compiler_options=compiler_options,
    )
    eval_step = jax.jit(make_eval_step(task),
                        in_shardings=(shardings.params, batch_sharding, replicated),
                        out_shardings=replicated,
                        compiler_options=compiler_options)

    writer = MetricWriter(workdir, total_steps, start_step, config.get("progress_bar"))
    num_params = count_params(abstract.params)
    if start_step == 0:
        writer.text(f"task={config.task} model parameters={num_params:,} devices="
                    f"{jax.device_count()} hosts={process_count}\nconfig:\n{config}")
        if process_index == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json_best_effort(indent=2))
    else:
        writer.text(f"resumed from the checkpoint at step {start_step}")

    meta = {"params_fingerprint": fingerprint, "task": config.task, **task.checkpoint_meta()}
    stop_after = config.get("stop_after_step")
    # Where this call stops: a rerun with the stop_after_step its checkpoint already reached
    # trains nothing (it used to go on to num_train_steps, since step == stop_after never held).
    last_step = total_steps if stop_after is None else min(stop_after, total_steps)
    if last_step < total_steps and start_step >= last_step:
        writer.text(f"the checkpoint at step {start_step} is at stop_after_step={stop_after}: "
                    "nothing to train")
    # A resumed run's summary covers the evaluations before the restart too.
    last_eval, best_eval = eval_history(workdir, start_step)
    average_last = int(config.get("average_last_checkpoints", 1))
    ema_eval, best_ema_eval = eval_history(workdir, start_step, EMA_PREFIX)
    averaged_eval, _ = eval_history(workdir, start_step, AVERAGED_PREFIX)
    pending: list[dict[str, jax.Array]] = []
    pending_first_step = start_step
    run_start = time.time()
    # Throughput is timed between logs over training alone: from the end of this call's
    # first step (which compiles) and again after every evaluation and save.
    timer_start, timer_step = None, start_step
    steps_done = 0
    step_flops, peak = 0.0, 0.0  # for train/mfu, set at the first step
    step = start_step

    def save(at_step: int) -> None:
        if pending:  # never checkpoint a NaN loss or NaN/Inf parameters
            _host_scalars(pending, pending_first_step)
        checkpointer.save(at_step, state, train_iter, meta)

    with _PreemptionFlag() as preemption:
        try:
            while step < last_step:
                batch = next(train_iter)
                if step == start_step:
                    task.check_batch(batch, "training batch")
                global_batch = partitioning.global_batch(batch, mesh)
                if step == start_step and config.get("log_mfu", True):
                    try:
                        step_flops = model_flops_per_step(config, tx, schedule, train_step,
                                                          state, global_batch, frozen)
                    except throughput.LoopInProgramError as error:
                        writer.text(f"train/mfu not logged: {error}")
                    if step_flops:
                        peak, peak_source = throughput.peak_flops(
                            "bfloat16" if config.get("mixed_precision") else "float32")
                        writer.text(f"train step: {step_flops / 1e9:,.4g} GFLOP (XLA cost "
                                    f"analysis); peak {peak / 1e12:,.4g} TFLOP/s "
                                    f"({peak_source})")
                state, metrics = train_step(state, global_batch, frozen)
                step += 1
                steps_done += 1
                pending.append(metrics)
                if timer_start is None:
                    jax.block_until_ready(metrics)
                    timer_start, timer_step = time.time(), step
                is_last = step == total_steps
                log_now = step % config.log_every_steps == 0 or is_last
                save_now = (step % config.checkpoint_every_steps == 0 or is_last
                            or step == last_step)
                eval_now = step % config.eval_every_steps == 0 or is_last
                preempted = preemption.anywhere()
                average_now = is_last and average_last > 1
                # Saved (and written through) before logging and evaluating: the grace
                # period after SIGTERM can be shorter than an evaluation (BLEU decoding on
                # WMT), and the checkpoint is what has to survive it. The final average
                # reads the final checkpoint from disk.
                saved_first = preempted or average_now
                if saved_first:
                    save(step)
                    checkpointer.wait()
                if log_now or eval_now:
                    # Also checks that every loss since the last log is finite.
                    scalars = _host_scalars(pending, pending_first_step)
                    pending, pending_first_step = [], step
                    if step > timer_step:  # not at the first step, whose time is compiling
                        elapsed = max(time.time() - timer_start, 1e-9)
                        scalars["train/examples_per_sec"] = (
                            (step - timer_step) * config.batch_size / elapsed)
                        if step_flops and peak:
                            scalars["train/mfu"] = ((step - timer_step) * step_flops / elapsed
                                                    / peak)
                    if eval_now:
                        last_eval = evaluate_with_generation(
                            task, eval_step, state.params, frozen, mesh, process_index,
                            process_count)
                        scalars.update(last_eval)
                        improve_best_eval(best_eval, last_eval)
                        if state.ema_params is not None:
                            ema_eval = _renamed(EMA_PREFIX, evaluate_with_generation(
                                task, eval_step, state.ema_params, frozen, mesh,
                                process_index, process_count))
                            scalars.update(ema_eval)
                            improve_best_eval(best_ema_eval, ema_eval)
                    if average_now:
                        averaged_eval = _evaluate_average(
                            checkpointer, average_last, writer, task, eval_step, shardings,
                            frozen, mesh)
                        scalars.update(averaged_eval)
                    writer.write(step, scalars)
                    timer_start, timer_step = time.time(), step
                if preempted:
                    writer.text(f"preempted: saved the checkpoint at step {step}; exiting")
                    break
                if save_now and not saved_first:
                    save(step)
                    timer_start, timer_step = time.time(), step
        finally:
            checkpointer.close()
            writer.close()

    wall_time = time.time() - run_start
    finished = step == total_steps
    report = None
    if finished:
        params = state.params
        if not all(x.is_fully_addressable for x in jax.tree.leaves(params)):
            # FSDP over several hosts: every process gets the whole parameters.
            params = multihost_utils.process_allgather(params, tiled=True)
        report = task.on_train_end(params, frozen, workdir, last_eval)
    summary = {
        "step": step,
        "num_params": num_params,
        "wall_time_sec": wall_time,
        # Of this invocation; None when it trained nothing (a finished run's summary rebuilt).
        "examples_per_sec": (steps_done * config.batch_size / max(wall_time, 1e-9)
                             if steps_done else None),
        "final_eval": last_eval,
        "best_eval": best_eval,
    }
    if ema_eval:
        summary["final_eval_ema"] = ema_eval
        summary["best_eval_ema"] = best_ema_eval
    if averaged_eval:
        summary["final_eval_averaged"] = averaged_eval
    if report is not None:
        summary["report"] = report
    if process_index == 0:
        # Written whole or not at all: a rerun trusts a summary.json of the final step.
        path = os.path.join(workdir, "summary.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(path + ".tmp", path)
        writer.text("summary: " + json.dumps(summary, indent=2))
    return summary


def _finished_summary(workdir: str, start_step: int,
                      total_steps: int) -> dict[str, Any] | None:
    """The summary of a run that already finished in ``workdir``, or None.

    Re-running a finished run (a requeued job, a repeated command) trains nothing; writing
    its summary and reports again would replace them with those of an empty run. When the
    summary of the final step is missing (the run died after its last checkpoint), None lets
    the caller write it again from the checkpoint and ``metrics.jsonl``.
    """
    path = os.path.join(workdir, "summary.json")
    if start_step != total_steps or not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    if summary.get("step") != total_steps:  # left by an earlier stop (stop_after_step, SIGTERM)
        return None
    logging.warning("the run in %s is already complete (checkpoint at step %d = "
                    "num_train_steps); its summary.json and reports are left as they are",
                    workdir, start_step)
    return summary


def flatten_for_report(tree: Any) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")
