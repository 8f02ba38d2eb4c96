"""orbax-checkpoint in the workdir: train state, input-iterator position and a model fingerprint.

Layout: ``WORKDIR/checkpoints/<step>/{state,data_iter,meta}``. Saves are asynchronous;
orbax writes each step to a temporary directory and renames it when complete, so an
interrupted save never looks like a finished checkpoint. Restoring checks the fingerprints
first (parameter paths, shapes and dtypes, and those of the optimizer state), so a workdir
holding another model's checkpoint, or one saved with other optimizer settings, fails with a
clear error instead of a partial load; a damaged latest checkpoint falls back to the previous
good one, saying so, and is moved to ``WORKDIR/damaged_checkpoints`` (by process 0 alone).
A checkpoint that does not fit the config is never treated as damaged: nothing is moved.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath  # orbax's path type (orbax depends on etils)
from flax import traverse_util
from jax.experimental import multihost_utils

ITEMS = ("state", "data_iter", "meta")
# The meta key of the optimizer state's fingerprint, written by ``Checkpointer.save``.
OPT_STATE_FINGERPRINT = "opt_state_fingerprint"

# Parts of orbax's messages for a restore target that does not fit the saved tree (another
# structure or another array shape): a config change, not damage, so nothing is moved aside.
_ORBAX_MISMATCH_MESSAGES = (
    "Structure mismatch",  # StandardCheckpointHandler: a path of the target is not on disk
    "structures do not match",  # BasePyTreeCheckpointHandler: the trees differ
    "is not compatible with the stored shape",  # serialization: an array of another shape
)


def _process_index() -> int:
    """This process's index; a function of its own so that a test can play another process
    here alone (grain and orbax name their per-process files by the real index)."""
    return jax.process_index()


class CheckpointMismatchError(ValueError):
    """The workdir's checkpoint belongs to a different model or optimizer configuration."""


def params_fingerprint(params: Any) -> dict[str, list]:
    """``{"a/b/kernel": [shape, dtype]}`` of a parameter tree (arrays or ShapeDtypeStructs)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return {k: [list(v.shape), str(np.dtype(v.dtype))] for k, v in sorted(flat.items())}


def tree_fingerprint(tree: Any) -> dict[str, list]:
    """``{"0/mu/head/kernel": [shape, dtype]}`` of any pytree (e.g. an optax state), leaves
    arrays or ShapeDtypeStructs; the same for a state and for its ``jax.eval_shape``."""
    fingerprint = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if not hasattr(leaf, "shape"):  # a Python scalar
            leaf = np.asarray(leaf)
        key = jax.tree_util.keystr(path, simple=True, separator="/")
        fingerprint[key] = [list(leaf.shape), str(leaf.dtype)]
    return dict(sorted(fingerprint.items()))


def _opt_state_fingerprint(state: Any) -> dict[str, list] | None:
    """The fingerprint of ``state``'s ``opt_state`` (a TrainState or a dict), with that of its
    parameter average under ``ema_params/`` when it has one (``config.ema_decay``); None
    without an optimizer state. A state without an average has the fingerprint it had
    before averages existed, so older checkpoints still compare equal."""
    def get(name):
        return state.get(name) if isinstance(state, Mapping) else getattr(state, name, None)

    opt_state, ema_params = get("opt_state"), get("ema_params")
    if opt_state is None:
        return None
    fingerprint = tree_fingerprint(opt_state)
    if ema_params is not None:
        fingerprint.update({f"ema_params/{key}": value
                            for key, value in params_fingerprint(ema_params).items()})
    return fingerprint


def describe_mismatch(saved: dict[str, list], expected: dict[str, list], limit: int = 8,
                      ours: str = "model") -> str:
    """What differs between a checkpoint's fingerprint and ``expected`` (that of ``ours``)."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    changed = sorted(k for k in set(saved) & set(expected) if saved[k] != expected[k])
    parts = []
    if missing:
        parts.append(f"missing in checkpoint: {missing[:limit]}")
    if unexpected:
        parts.append(f"not in this {ours}: {unexpected[:limit]}")
    if changed:
        parts.append("shape/dtype differs: " + ", ".join(
            f"{k} checkpoint {saved[k]} vs {ours} {expected[k]}" for k in changed[:limit]))
    return "; ".join(parts)


def _is_structure_mismatch(error: BaseException) -> bool:
    """Whether orbax refused a restore because the target differs from the saved tree."""
    seen = set()
    while error is not None and id(error) not in seen:  # orbax may wrap the error
        seen.add(id(error))
        if any(text in str(error) for text in _ORBAX_MISMATCH_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


_OPTIMIZER_HINT = (
    "the config's optimizer settings changed since that checkpoint was saved (optimizer.name, "
    "or an optimizer.* setting that adds or drops a part of the optimizer state, such as "
    "grad_clip_norm, momentum or weight_decay, or ema_decay turned on or off: ema_params/*); "
    "resume with the settings the run was started with, or use a new --workdir. No "
    "checkpoint was moved or changed")


@functools.cache
def _save_whole_arrays_in_one_process() -> bool:
    """Turns orbax's replica-parallel saving off in a single process off TPU; True if it did.

    Why: orbax (outside a GPU given in ``JAX_PLATFORMS``) splits each replicated array among
    its replicas, every replica copying its own slice to the host, so that the hosts of a
    multi-host run share the writing. In one process that shares nothing and costs an eager
    ``jax.lax.slice`` per array and device, each one compiled once per shape and device: in a
    tiny ViT run of the launcher on 8 simulated CPU devices, 2 saves took 3.7 s of a 19.8 s
    run, 3.4 s of it in 1,056 such slices (``python -m cProfile -m trainer.main
    --config=configs/vit_digits.py`` with the tests' ``TINY_VIT_FLAGS`` and ``STEP_FLAGS``,
    2026-12-01); without the profiler, two such runs each took 18.8 and 19.3 s before this
    change and 17.6 and 15.9 s after it. Several processes (their writes are shared) and TPUs
    (where a host's chips copy to it in parallel) keep orbax's default. The change is to
    orbax's global type-handler registry, the one ``StandardCheckpointHandler`` reads, which
    takes no handler of its own.
    """
    if jax.process_count() > 1 or jax.default_backend() == "tpu":
        return False
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)
    return True


class Checkpointer:
    """Saves and restores ``TrainState`` + iterator state with an orbax ``CheckpointManager``.

    Args:
      workdir: the run's directory; checkpoints go to ``workdir/checkpoints``.
      keep: how many recent checkpoints to keep.
      async_save: write in a background thread while training continues.
    """

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True) -> None:
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        _save_whole_arrays_in_one_process()
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
        """Saves ``state``, ``data_iter``'s position and ``meta``, to which the optimizer
        state's fingerprint is added: a resume with other optimizer settings is then told so,
        instead of orbax's structure error, which looks like damage."""
        opt_fingerprint = _opt_state_fingerprint(state)
        if opt_fingerprint is not None:
            meta = {**meta, OPT_STATE_FINGERPRINT: opt_fingerprint}
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
        ``CheckpointMismatchError`` when the checkpoint is of another model or was saved with
        other optimizer settings (moving nothing), and ``RuntimeError`` when checkpoints exist
        but none can be read. Every process of a multi-host run calls this; they check that
        they restored the same step, and process 0 alone moves damaged checkpoints aside.
        """
        steps = self.all_steps()
        expected_opt = _opt_state_fingerprint(abstract_state)
        errors = []
        restored, meta, restored_step = None, None, None
        # Newest first, on every process alike, so that all come to the same step.
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
            saved_opt = meta.get(OPT_STATE_FINGERPRINT)
            # Checkpoints saved before the optimizer fingerprint existed have none to compare.
            compared = saved_opt is not None and expected_opt is not None
            if compared and saved_opt != expected_opt:
                raise CheckpointMismatchError(
                    f"the checkpoint at step {step} of workdir {self.workdir} ({path}) holds a "
                    "different optimizer state than the config makes ("
                    f"{describe_mismatch(saved_opt, expected_opt, ours='config')}): "
                    + _OPTIMIZER_HINT)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data_iter=grain.checkpoint.CheckpointRestore(data_iter),
                ))
            except Exception as error:  # noqa: BLE001
                # Without a fingerprint to compare, orbax's structure error is the sign of
                # a config change; with matching fingerprints it can only be damage.
                if not compared and _is_structure_mismatch(error):
                    raise CheckpointMismatchError(
                        f"the checkpoint at step {step} of workdir {self.workdir} ({path}) "
                        "does not fit the state the config makes (orbax: "
                        f"{str(error)[:300]}...): the parameters match, so most likely "
                        + _OPTIMIZER_HINT) from error
                errors.append(f"{path}: {type(error).__name__}: {error}")
                logging.error("checkpoint %s is damaged (%s); falling back to an older one",
                              path, error)
                continue
            restored_step = step
            break
        # Every process runs the same collectives whatever it found, so one that could read
        # other checkpoints than the rest fails here instead of training from another step.
        self._check_processes_agree(restored_step)
        if restored is None:
            if errors:
                raise RuntimeError(
                    f"checkpoints exist in {self.directory} but none could be restored: {errors}")
            return None
        if errors:
            logging.warning("restored the older checkpoint %s after: %s",
                            os.path.join(self.directory, str(restored_step)), errors)
        # Only damaged ones are newer: each failed to read, and a mismatch raised above.
        self._set_aside([s for s in steps if s > restored_step])
        return restored["state"], meta

    def _check_processes_agree(self, step: int | None) -> None:
        """Raises on every process when the processes restored different steps."""
        if jax.process_count() == 1:
            return
        found = multihost_utils.process_allgather(np.int32(-1 if step is None else step))
        found = [int(s) for s in np.ravel(found)]
        if len(set(found)) > 1:
            raise RuntimeError(
                f"the processes could read different checkpoints of {self.directory}: the "
                f"newest readable step per process is {found} (-1: none), expected one step "
                "for all; some hosts see damage or files the others do not (check the shared "
                "filesystem). No checkpoint was moved")

    def _set_aside(self, steps: list[int]) -> None:
        """Moves damaged checkpoints to ``workdir/damaged_checkpoints`` (kept for inspection,
        out of the way of the steps the resumed run will save again).

        Only process 0 moves them: the workdir is shared, and a second process's move of a
        directory already gone would crash it. The others wait until it is done before
        listing the checkpoints again.
        """
        if steps and _process_index() == 0:
            aside = os.path.join(self.workdir, "damaged_checkpoints")
            os.makedirs(aside, exist_ok=True)
            for step in steps:
                source = os.path.join(self.directory, str(step))
                if not os.path.exists(source):  # moved by another Checkpointer of this workdir
                    logging.warning("the damaged checkpoint %s is already gone", source)
                    continue
                target = os.path.join(aside, f"{step}-{int(time.time())}")
                os.replace(source, target)
                logging.warning("moved the damaged checkpoint %s to %s", source, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("trainer.checkpointing.set_aside")
        if steps:
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


def read_meta(workdir: str, step: int) -> dict:
    """The meta a workdir's checkpoint at ``step`` was saved with (``params_fingerprint``, a
    distillation teacher's checkpoint and step, ...), without reading its arrays."""
    return _read_meta(os.path.join(os.path.abspath(workdir), "checkpoints", str(step)))


def _read_meta(path: str) -> dict:
    """The meta of the checkpoint directory ``path``."""
    return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        os.path.join(path, "meta"), args=ocp.args.JsonRestore())


def _read_params_and_meta(path: str, ema: bool = False) -> tuple[Any, dict]:
    """The parameters (as numpy; with ``ema``, their moving average) and meta of the
    checkpoint directory ``path``.

    Only that subtree is read (orbax's partial restore): the optimizer state, twice the
    parameters' size with Adam, stays on disk.
    """
    meta = _read_meta(path)
    state_path = os.path.join(path, "state")
    checkpointer = ocp.PyTreeCheckpointer()
    # The handler's metadata, not the checkpointer's: that one looks for the step's own
    # metadata file inside the item directory and warns on every read that it is missing.
    metadata = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_path))
    tree = getattr(metadata, "item_metadata", None) or getattr(metadata, "tree", metadata)
    tree = getattr(tree, "tree", tree)
    key = "ema_params" if ema else "params"
    if tree.get(key) is None:
        if ema:
            raise MissingAverageError(
                f"the checkpoint {path} holds no moving average of the parameters: its run "
                "had config.ema_decay=0; read its parameters without ema=True")
        raise KeyError(f"the checkpoint {path} holds no 'params' (its state has "
                       f"{sorted(tree)})")
    wanted = {key: tree[key]}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
    state = checkpointer.restore(state_path, args=ocp.args.PyTreeRestore(
        item=wanted, restore_args=restore_args, partial_restore=True))
    return state[key], meta


class MissingAverageError(ValueError):
    """``ema=True`` asked of a checkpoint saved without a moving average of the parameters."""


def restore_params_with_meta(workdir: str, step: int | None = None,
                             ema: bool = False) -> tuple[Any, int, dict]:
    """``(params, step, meta)`` of a workdir's checkpoint: the newest readable one when
    ``step`` is None, else that step. ``meta`` holds ``params_fingerprint``. With ``ema``
    the parameters are their moving average (``config.ema_decay``); a checkpoint without one
    raises ``MissingAverageError``.

    The workdir may be another run's (a distillation teacher), so a damaged checkpoint is
    only skipped, with a warning naming it, never moved. Raises ``FileNotFoundError`` when
    there is no checkpoint (or none at ``step``), ``RuntimeError`` when none can be read.
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    if step is not None:
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {directory}; its steps are {steps}")
        path = os.path.join(directory, str(step))
        try:
            params, meta = _read_params_and_meta(path, ema)
        except MissingAverageError:
            raise
        except Exception as error:  # noqa: BLE001 - named with its path
            raise RuntimeError(f"the checkpoint {path} of workdir {workdir} cannot be read: "
                               f"{type(error).__name__}: {error}") from error
        return params, step, meta
    errors = []
    for candidate in reversed(steps):
        path = os.path.join(directory, str(candidate))
        try:
            params, meta = _read_params_and_meta(path, ema)
        except MissingAverageError:
            raise
        except Exception as error:  # noqa: BLE001 - any damage is reported and skipped
            errors.append(f"{path}: {type(error).__name__}: {error}")
            logging.warning("checkpoint %s is unreadable (%s: %s); trying an older one",
                            path, type(error).__name__, error)
            continue
        if errors:
            logging.warning("read the parameters of the older checkpoint %s after: %s",
                            path, errors)
        return params, candidate, meta
    raise RuntimeError(
        f"workdir {workdir} has checkpoints {steps} in {directory} but none can be read: "
        f"{errors}")


def restore_params(workdir: str, step: int | None = None, ema: bool = False) -> Any:
    """The parameters of a workdir's checkpoint (the newest readable when ``step`` is None),
    as numpy, or with ``ema`` their moving average; see ``restore_params_with_meta``.

    For notebooks, evaluation scripts, distillation teachers and tests, on any number of
    devices; training itself restores the whole sharded state.
    """
    return restore_params_with_meta(workdir, step, ema)[0]


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of a workdir's finished checkpoints, oldest first (empty when none)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    return sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []


def average_params(workdir: str, steps: list[int]) -> Any:
    """The element-wise mean of the parameters of a workdir's checkpoints at ``steps``, as
    numpy in the parameters' own dtypes.

    Checkpoint averaging as in "Attention Is All You Need" (§6.1: the base model is the
    average of the last 5 checkpoints, the big one of the last 20) and tensor2tensor's
    ``avg_checkpoints``; written here because orbax restores checkpoints but has no average.
    The sum is kept in float64, so the order of the checkpoints does not change the result.
    Every checkpoint must be readable and of the same model: averaging fewer than asked, or
    another model's parameters, would silently give another model. Raises
    ``FileNotFoundError`` for a missing step, ``RuntimeError`` for an unreadable one and
    ``CheckpointMismatchError`` when their parameters differ in paths, shapes or dtypes.
    """
    if not steps:
        raise ValueError(f"average_params needs at least one step of workdir {workdir}")
    total, first_fingerprint = None, None
    for step in steps:
        params, _, _ = restore_params_with_meta(workdir, step)
        fingerprint = params_fingerprint(params)
        if first_fingerprint is None:
            first_fingerprint = fingerprint
            total = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
            dtypes = jax.tree.map(lambda x: np.asarray(x).dtype, params)
            continue
        if fingerprint != first_fingerprint:
            raise CheckpointMismatchError(
                f"the checkpoints of workdir {workdir} at steps {steps[0]} and {step} hold "
                f"different parameters ({describe_mismatch(fingerprint, first_fingerprint)}); "
                "only checkpoints of one model can be averaged")
        total = jax.tree.map(lambda t, x: t + np.asarray(x, np.float64), total, params)
    return jax.tree.map(lambda t, dtype: (t / len(steps)).astype(dtype), total, dtypes)
