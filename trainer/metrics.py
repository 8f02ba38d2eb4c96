"""Metrics: a live progress bar (or plain log lines), ``metrics.jsonl`` and TensorBoard.

TensorBoard event files are written with ``tensorboardX``, which needs no TensorFlow.
Only process 0 writes files; every process computes the same global metrics.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
from absl import logging

# The prefixes of the evaluations of other parameters than the trained ones
# (``trainer.train``): the final checkpoints' average and the parameters' moving average.
AVERAGED_PREFIX = "eval_averaged/"
EMA_PREFIX = "eval_ema/"


class MetricWriter:
    """Writes scalars per step to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``.

    Args:
      workdir: the run's directory.
      total_steps: for the progress bar's ETA.
      start_step: the step the run (re)starts from.
      progress_bar: ``None`` picks a tqdm bar on a terminal and log lines otherwise.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0,
                 progress_bar: bool | None = None) -> None:
        self.is_writer = jax.process_index() == 0
        self.total_steps = total_steps
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        self._bar = None
        if not self.is_writer:
            return
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))
        if progress_bar is None:
            progress_bar = sys.stderr.isatty()
        if progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step",
                             dynamic_ncols=True)
        self._start_time = time.time()
        self._start_step = start_step

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """One JSON line ``{"step": step, **scalars}`` plus TensorBoard scalars."""
        if not self.is_writer:
            return
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step":
                self._tb.add_scalar(key, value, global_step=step)
        self._tb.flush()
        self._report(step, record)

    def _report(self, step: int, record: dict[str, Any]) -> None:
        loss = record.get("train/loss")
        speed = record.get("train/examples_per_sec")
        if self._bar is not None:
            self._bar.n = step
            postfix = {}
            if loss is not None:
                postfix["loss"] = f"{loss:.4f}"
            if speed is not None:
                postfix["ex/s"] = f"{speed:.0f}"
            for key in record:
                if key.startswith("eval/"):
                    postfix[key] = f"{record[key]:.4f}"
            self._bar.set_postfix(postfix, refresh=True)
            return
        elapsed = time.time() - self._start_time
        done = max(step - self._start_step, 1)
        eta = elapsed / done * (self.total_steps - step)
        shown = " ".join(f"{k}={v:.4g}" for k, v in record.items() if k != "step")
        print(f"step {step}/{self.total_steps} {shown} eta={eta:.0f}s", flush=True)

    def text(self, message: str) -> None:
        if not self.is_writer:
            return
        if self._bar is not None:
            self._bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
    """The records of ``workdir/metrics.jsonl``, in order.

    A last line cut short (a run killed or out of disk while appending) is dropped with a
    warning: the checkpoint it followed is intact, and a resumed run logs that step again
    (``truncate_metrics`` rewrites the file). A damaged line elsewhere raises ``ValueError``
    naming the file and line.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if index == len(lines) - 1:
                logging.warning("%s:%d: dropped a record cut short (%s): %r", path, number,
                                error, line.strip()[:80])
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({error}): "
                             f"{line.strip()[:80]!r}; "
                             "remove or repair that line") from error
    return records


def improve_best_eval(best: dict[str, float], evaluation: dict[str, float]) -> None:
    """Updates ``best`` in place with ``evaluation``: the lowest value of each metric whose
    name ends in ``loss``, the highest of every other one. NaN and infinite values are
    skipped: ``min``/``max`` keep a NaN that comes first, so it would stay "best" for good."""
    for key, value in evaluation.items():
        if not math.isfinite(value):
            continue
        better = min if key.endswith("loss") else max
        best[key] = better(best.get(key, value), value)


def eval_history(workdir: str, last_step: int,
                 prefix: str = "eval/") -> tuple[dict[str, float], dict[str, float]]:
    """``(last_eval, best_eval)`` of the metrics named ``prefix*`` (``eval/``, or
    ``EMA_PREFIX`` or ``AVERAGED_PREFIX``) logged up to ``last_step``, so a resumed run's
    summary is that of the uninterrupted run. Both are empty for a fresh run."""
    last: dict[str, float] = {}
    best: dict[str, float] = {}
    for record in read_metrics(workdir):
        evaluation = {k: v for k, v in record.items() if k.startswith(prefix)}
        if record["step"] <= last_step and evaluation:
            last = evaluation
            improve_best_eval(best, evaluation)
    return last, best


def truncate_metrics(workdir: str, last_step: int) -> None:
    """Drop records after ``last_step``: a resumed run redoes those steps and logs them again,
    so no step appears twice."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return
    kept = [r for r in read_metrics(workdir) if r["step"] <= last_step]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
