"""orbax-checkpoint in the workdir: train state, input-iterator position and a model fingerprint.

Layout: ``WORKDIR/checkpoints/<step>/{state,data_iter,meta}``. Saves are asynchronous;
orbax writes each step to a temporary directory and renames it when complete, so an
interrupted save never looks like a finished checkpoint. Restoring checks the fingerprint
(parameter paths, shapes and dtypes) first, so a workdir holding another model's checkpoint
fails with a clear error instead of a partial load; a damaged latest checkpoint falls back to
the previous good one, saying so.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util

ITEMS = ("state", "data_iter", "meta")


class CheckpointMismatchError(ValueError):
    """The workdir's checkpoint belongs to a different model."""


def params_fingerprint(params: Any) -> dict[str, list]:
    """``{"a/b/kernel": [shape, dtype]}`` of a parameter tree (arrays or ShapeDtypeStructs)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: [list(v.shape), str(np.dtype(v.dtype))] for k, v in sorted(flat.items())}


def describe_mismatch(saved: dict[str, list], expected: dict[str, list], limit: int = 8) -> str:
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    changed = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    parts = []
    if missing:
        parts.append(f"missing in checkpoint: {missing[:limit]}")
    if unexpected:
        parts.append(f"not in this model: {unexpected[:limit]}")
    if changed:
        parts.append("shape/dtype differs: " + ", ".join(
            f"{k} checkpoint {saved[k]} vs model {expected[k]}" for k in changed[:limit]))
    return "; ".join(parts)


class Checkpointer:
    """Saves and restores ``TrainState`` + iterator state with an orbax ``CheckpointManager``.

    Args:
      workdir: the run's directory; checkpoints go to ``workdir/checkpoints``.
      keep: how many recent checkpoints to keep.
      async_save: write in a background thread while training continues.
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True) -> None:
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            create=True,
            enable_async_checkpointing=async_save,
            # Temporary directories of saves cut off by a crash are removed at start-up.
            cleanup_tmp_directories=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iter: Any, meta: dict) -> None:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            meta=ocp.args.JsonSave(meta),
        )
        try:
            self.manager.save(step, args=args, force=True)
        except OSError as error:  # a full disk, a read-only path: fail loudly, keep older ones
            raise self._save_failed(step, error) from error

    def _save_failed(self, step: int | None, error: Exception) -> OSError:
        """The error of a failed save, after removing its partial temporary directory."""
        partial = [name for name in os.listdir(self.directory)
                   if ".orbax-checkpoint-tmp" in name
                   and (step is None or name.split(".")[0] == str(step))]
        for name in partial:  # frees the space a full disk needs for the next try
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        which = f"checkpoint {step}" if step is not None else "the last checkpoint"
        return OSError(
            f"saving {which} to {self.directory} failed: {error}; the previous "
            f"checkpoints {self.all_steps()} are kept")

    def restore_latest(self, abstract_state: Any, data_iter: Any,
                       expected_fingerprint: dict[str, list]) -> tuple[Any, dict] | None:
        """The newest restorable checkpoint as ``(state, meta)``; None when there is none.

        ``data_iter`` is moved to the saved position in place. Raises
        ``CheckpointMismatchError`` when the checkpoint is of another model, and
        ``RuntimeError`` when checkpoints exist but none can be read.
        """
        steps = self.all_steps()
        errors = []
        for step in reversed(steps):
            path = os.path.join(self.directory, str(step))
            try:
                meta = self.manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as error:  # noqa: BLE001 - any damage is reported and skipped
                errors.append(f"{path}: {type(error).__name__}: {error}")
                logging.error("checkpoint %s is unreadable (%s); trying an older one", path, error)
                continue
            saved = meta.get("params_fingerprint", {})
            if saved != expected_fingerprint:
                raise CheckpointMismatchError(
                    f"the workdir's checkpoint {path} is of a different model than the config "
                    f"asks for ({describe_mismatch(saved, expected_fingerprint)}); use a new "
                    "--workdir or the matching config"
                )
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data_iter=grain.checkpoint.CheckpointRestore(data_iter),
                ))
            except Exception as error:  # noqa: BLE001
                errors.append(f"{path}: {type(error).__name__}: {error}")
                logging.error("checkpoint %s is damaged (%s); falling back to an older one",
                              path, error)
                continue
            if errors:
                logging.warning("restored the older checkpoint %s after: %s", path, errors)
                self._set_aside([s for s in steps if s > step])
            return restored["state"], meta
        if errors:
            raise RuntimeError(
                f"checkpoints exist in {self.directory} but none could be restored: {errors}")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged checkpoints to ``workdir/damaged_checkpoints`` (kept for inspection,
        out of the way of the steps the resumed run will save again)."""
        aside = os.path.join(os.path.dirname(self.directory), "damaged_checkpoints")
        os.makedirs(aside, exist_ok=True)
        for step in steps:
            target = os.path.join(aside, f"{step}-{int(time.time())}")
            os.replace(os.path.join(self.directory, str(step)), target)
            logging.warning("moved the damaged checkpoint %s to %s", step, target)
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until the background save is done; raises its error if it failed."""
        try:
            self.manager.wait_until_finished()
        except OSError as error:  # an asynchronous save that failed after save() returned
            raise self._save_failed(None, error) from error

    def close(self) -> None:
        self.wait()
        self.manager.close()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)


def restore_params(workdir: str, step: int | None = None) -> Any:
    """The parameters of a workdir's checkpoint (the newest when ``step`` is None), as numpy.

    For notebooks, evaluation scripts and tests, on any number of devices; training itself
    restores the whole sharded state.
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = ocp.utils.checkpoint_steps(directory) if os.path.isdir(directory) else []
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    step = max(steps) if step is None else step
    path = os.path.join(directory, str(step), "state")
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", metadata)
    tree = getattr(tree, "tree", tree)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    return state["params"]
