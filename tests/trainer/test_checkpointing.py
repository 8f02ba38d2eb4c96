"""Checkpointer and restore_params on small hand-made states: damaged checkpoints on one or
several processes, checkpoints of other optimizer settings, a teacher's damaged workdir."""

import json
import logging
import os
import sys

import grain
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from tests.multiprocess import run_processes
from tests.trainer.launcher import REPO
from tests.xla_flags import xla_flags
from trainer import checkpointing
from trainer.checkpointing import (
    Checkpointer,
    CheckpointMismatchError,
    params_fingerprint,
    restore_params,
)
from trainer.steps import TrainState

ADAMW = optax.adamw(1e-3)
SGD = optax.sgd(0.1, momentum=0.9)  # another optimizer state: one trace instead of mu/nu


def _state(tx, step=0):
    # Parameters that differ per step, so a test can tell which checkpoint it read.
    params = {"dense": {"kernel": np.full((3, 4), step, np.float32),
                        "bias": np.zeros(4, np.float32)}}
    return {"step": np.int32(step), "params": params, "opt_state": tx.init(params),
            "rng": np.zeros(2, np.uint32)}


def _abstract(tx, container=dict):
    return jax.eval_shape(lambda: container(**_state(tx)))


def _step_of(state):
    return state["step"] if isinstance(state, dict) else state.step


FINGERPRINT = params_fingerprint(_state(ADAMW)["params"])


def _data_iter():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


def _write(workdir, tx=ADAMW, steps=(2, 4), opt_fingerprint=True, put=lambda x: x,
           container=dict):
    checkpointer = Checkpointer(workdir, async_save=False)
    data_iter = _data_iter()
    for step in steps:
        next(data_iter)
        state = jax.tree.map(put, container(**_state(tx, step)))
        meta = {"params_fingerprint": FINGERPRINT}
        if opt_fingerprint:
            checkpointer.save(step, state, data_iter, meta)
        else:  # as saved before the optimizer state's fingerprint was recorded
            checkpointer.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data_iter=grain.checkpoint.CheckpointSave(data_iter),
                meta=ocp.args.JsonSave(meta)), force=True)
    checkpointer.close()


def _damage(workdir, step):
    """Overwrites every file of a checkpoint's state (a disk error, a torn copy)."""
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", str(step), "state")):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage")


def _steps_on_disk(workdir):
    return sorted(int(name) for name in os.listdir(os.path.join(workdir, "checkpoints"))
                  if name.isdigit())


def _damaged_dir(workdir):
    return os.path.join(workdir, "damaged_checkpoints")


def test_one_process_saves_each_replicated_array_whole(tmp_path, monkeypatch):
    """orbax's replica-parallel saving slices every replicated array once per device (an
    eager, compiled ``jax.lax.slice_in_dim`` each) to share the writing among hosts; a single
    process has no one to share it with, so the Checkpointer saves the arrays whole."""
    replicated = jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(jax.devices()), ("data",)), jax.sharding.PartitionSpec())
    assert jax.device_count() > 1, "needs several devices for a replica to slice"
    # A dimension that the 8 replicas divide evenly, which replica-parallel saving needs.
    params = {"dense": {"kernel": np.arange(16 * 8, dtype=np.float32).reshape(16, 8)}}
    state = jax.device_put({"step": np.int32(2), "params": params}, replicated)
    slices = []
    real_slice_in_dim = jax.lax.slice_in_dim

    def counting_slice_in_dim(*args, **kwargs):
        slices.append(args[0].shape)
        return real_slice_in_dim(*args, **kwargs)

    monkeypatch.setattr(jax.lax, "slice_in_dim", counting_slice_in_dim)
    # The control: orbax's default ArrayHandler, as every process had it, slices here.
    default_handler = ocp.PyTreeCheckpointHandler(
        type_handler_registry=ocp.type_handlers.create_type_handler_registry(
            (jax.Array, ocp.type_handlers.ArrayHandler())))
    ocp.Checkpointer(default_handler).save(tmp_path / "orbax_default",
                                           args=ocp.args.PyTreeSave(state))
    assert len(slices) >= jax.device_count()

    slices.clear()
    checkpointer = Checkpointer(str(tmp_path / "run"), async_save=False)
    checkpointer.save(2, state, _data_iter(), {"params_fingerprint": params_fingerprint(params)})
    checkpointer.close()
    assert slices == []
    restored = restore_params(str(tmp_path / "run"))
    np.testing.assert_array_equal(restored["dense"]["kernel"], params["dense"]["kernel"])


def test_process_zero_restores_the_previous_checkpoint_and_moves_the_damaged_one_aside(
        tmp_path):
    workdir = str(tmp_path / "run")
    _write(workdir)
    _damage(workdir, 4)
    checkpointer = Checkpointer(workdir, async_save=False)
    state, meta = checkpointer.restore_latest(_abstract(ADAMW), _data_iter(), FINGERPRINT)
    assert int(state["step"]) == 2
    assert meta["params_fingerprint"] == FINGERPRINT
    assert checkpointer.all_steps() == _steps_on_disk(workdir) == [2]
    assert [name.split("-")[0] for name in os.listdir(_damaged_dir(workdir))] == ["4"]
    checkpointer.close()


def test_other_processes_leave_the_damaged_checkpoint_to_process_zero(tmp_path, monkeypatch):
    """On several hosts every process restores from the shared workdir; a second process
    moving the same directory crashed with FileNotFoundError."""
    workdir = str(tmp_path / "run")
    _write(workdir)
    _damage(workdir, 4)
    # Process 1 for the set-aside decision alone: grain names its files by the real index.
    monkeypatch.setattr(checkpointing, "_process_index", lambda: 1, raising=False)
    checkpointer = Checkpointer(workdir, async_save=False)
    state, _ = checkpointer.restore_latest(_abstract(ADAMW), _data_iter(), FINGERPRINT)
    assert int(state["step"]) == 2
    assert _steps_on_disk(workdir) == [2, 4]
    assert not os.path.exists(_damaged_dir(workdir))
    checkpointer.close()

    monkeypatch.undo()  # process 0 of the same run
    checkpointer = Checkpointer(workdir, async_save=False)
    state, _ = checkpointer.restore_latest(_abstract(ADAMW), _data_iter(), FINGERPRINT)
    assert int(state["step"]) == 2
    assert _steps_on_disk(workdir) == [2]
    assert len(os.listdir(_damaged_dir(workdir))) == 1
    checkpointer.close()


_TWO_PROCESS_SCRIPT = """
import os, sys
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

port, index, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", 2, index)
from tests.trainer.test_checkpointing import (
    ADAMW, FINGERPRINT, _abstract, _damage, _data_iter, _write)
from trainer.checkpointing import Checkpointer

replicated = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), PartitionSpec())
put = lambda x: jax.make_array_from_callback(
    np.shape(x), replicated, lambda index: np.asarray(x)[index])
_write(workdir, put=put)
multihost_utils.sync_global_devices("written")
if index == 0:
    _damage(workdir, 4)
multihost_utils.sync_global_devices("damaged")
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        _abstract(ADAMW))
checkpointer = Checkpointer(workdir, async_save=False)
state, _ = checkpointer.restore_latest(abstract, _data_iter(), FINGERPRINT)
print("RESTORED", int(state["step"]), checkpointer.all_steps(), flush=True)
checkpointer.close()
"""


@pytest.mark.slow
def test_two_processes_restore_the_same_step_and_process_zero_moves_the_damage(tmp_path):
    workdir = str(tmp_path / "run")
    script = tmp_path / "restore.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    env = {**os.environ, "XLA_FLAGS": xla_flags(1),
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    outputs = run_processes(
        lambda port: [[sys.executable, str(script), str(port), str(index), workdir]
                      for index in range(2)], env=env, cwd=REPO, timeout=240)
    for output in outputs:
        assert "RESTORED 2 [2]" in output, output[-3000:]
    assert _steps_on_disk(workdir) == [2]
    assert [name.split("-")[0] for name in os.listdir(_damaged_dir(workdir))] == ["4"]


@pytest.mark.parametrize("container", [dict, TrainState])  # orbax words its errors apart
@pytest.mark.parametrize("opt_fingerprint", [True, False], ids=["fingerprint", "older"])
def test_checkpoints_of_other_optimizer_settings_are_refused_and_kept(tmp_path,
                                                                      opt_fingerprint,
                                                                      container):
    """Resuming with another optimizer reported every healthy checkpoint as damaged. With
    the optimizer state's fingerprint in meta it is told before restoring; a checkpoint saved
    without it is told by orbax's structure error, which is no damage either."""
    workdir = str(tmp_path / "run")
    _write(workdir, opt_fingerprint=opt_fingerprint, container=container)
    checkpointer = Checkpointer(workdir, async_save=False)
    with pytest.raises(CheckpointMismatchError) as error:
        checkpointer.restore_latest(_abstract(SGD, container), _data_iter(), FINGERPRINT)
    message = str(error.value)
    assert f"step 4 of workdir {workdir}" in message
    assert "optimizer" in message and "No checkpoint was moved" in message
    if opt_fingerprint:
        assert "different optimizer state" in message and "0/trace" in message
    assert _steps_on_disk(workdir) == [2, 4]
    assert not os.path.exists(_damaged_dir(workdir))
    # The run's own settings still resume from the newest checkpoint.
    state, _ = checkpointer.restore_latest(_abstract(ADAMW, container), _data_iter(),
                                           FINGERPRINT)
    assert int(_step_of(state)) == 4
    checkpointer.close()


def test_a_structure_error_despite_matching_fingerprints_is_damage(tmp_path):
    """A torn tree metadata file makes orbax report a structure mismatch; with the optimizer
    fingerprint matching, that is damage, and the previous checkpoint is restored."""
    workdir = str(tmp_path / "run")
    _write(workdir)
    metadata_file = os.path.join(workdir, "checkpoints", "4", "state", "_METADATA")
    with open(metadata_file) as f:
        metadata = json.load(f)
    metadata["tree_metadata"].pop(next(k for k in metadata["tree_metadata"] if "opt_state" in k))
    with open(metadata_file, "w") as f:
        json.dump(metadata, f)
    checkpointer = Checkpointer(workdir, async_save=False)
    state, _ = checkpointer.restore_latest(_abstract(ADAMW), _data_iter(), FINGERPRINT)
    assert int(state["step"]) == 2
    assert _steps_on_disk(workdir) == [2]
    checkpointer.close()


def test_restore_params_skips_a_damaged_newest_checkpoint_and_moves_nothing(tmp_path,
                                                                           caplog):
    """A distillation teacher's workdir with a damaged newest checkpoint: its parameters come
    from the previous one (it failed with a bare JSONDecodeError) and the workdir, another
    run's, is left as it is."""
    workdir = str(tmp_path / "teacher")
    _write(workdir)
    _damage(workdir, 4)
    with caplog.at_level(logging.WARNING):
        params = restore_params(workdir)
    np.testing.assert_array_equal(params["dense"]["kernel"], np.full((3, 4), 2, np.float32))
    assert os.path.join(workdir, "checkpoints", "4") in caplog.text
    assert _steps_on_disk(workdir) == [2, 4]
    assert not os.path.exists(_damaged_dir(workdir))


def test_restore_params_names_the_workdir_when_no_checkpoint_can_be_read(tmp_path):
    workdir = str(tmp_path / "teacher")
    _write(workdir)
    _damage(workdir, 2)
    _damage(workdir, 4)
    with pytest.raises(RuntimeError, match=f"workdir {workdir} has checkpoints \\[2, 4\\]"):
        restore_params(workdir)


def test_restore_params_with_meta_gives_the_step_and_meta_it_read(tmp_path):
    from trainer.checkpointing import restore_params_with_meta

    workdir = str(tmp_path / "teacher")
    _write(workdir)
    params, step, meta = restore_params_with_meta(workdir)
    assert step == 4 and meta["params_fingerprint"] == FINGERPRINT
    assert params_fingerprint(params) == FINGERPRINT
    params, step, _ = restore_params_with_meta(workdir, step=2)
    assert step == 2
    np.testing.assert_array_equal(params["dense"]["kernel"], np.full((3, 4), 2, np.float32))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3 .*\[2, 4\]"):
        restore_params_with_meta(workdir, step=3)
    _damage(workdir, 4)
    _, step, _ = restore_params_with_meta(workdir)
    assert step == 2
    with pytest.raises(RuntimeError, match="checkpoints/4 of workdir"):
        restore_params_with_meta(workdir, step=4)


def test_restore_params_reads_the_parameters_alone(tmp_path, monkeypatch, caplog):
    """Only the ``params`` subtree is read: the Adam moments, twice its size, stay on disk
    (averaging the big WMT model's 20 checkpoints would otherwise read ~50 GB, not ~17). And
    quietly: orbax warned about a missing metadata file on every read."""
    workdir = str(tmp_path / "run")
    _write(workdir, steps=(2,))
    read = []
    original = ocp.PyTreeCheckpointer.restore

    def recording_restore(self, *args, **kwargs):
        tree = original(self, *args, **kwargs)
        read.append(sorted(tree))
        return tree

    monkeypatch.setattr(ocp.PyTreeCheckpointer, "restore", recording_restore)
    with caplog.at_level(logging.WARNING):
        params = restore_params(workdir)
    np.testing.assert_array_equal(params["dense"]["kernel"], np.full((3, 4), 2, np.float32))
    assert read == [["params"]]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_average_params_is_the_mean_of_the_steps_asked_in_the_parameters_dtype(tmp_path):
    from trainer.checkpointing import average_params, checkpoint_steps

    workdir = str(tmp_path / "run")
    _write(workdir, steps=(2, 4, 9))  # kernels filled with 2, 4 and 9
    assert checkpoint_steps(workdir) == [2, 4, 9]
    # Mean 5 of all three (their median is 4), 6.5 of the newest two.
    for steps, mean in (([2, 4, 9], 5.0), ([4, 9], 6.5), ([9], 9.0)):
        averaged = average_params(workdir, steps)
        assert averaged["dense"]["kernel"].dtype == np.float32
        np.testing.assert_array_equal(averaged["dense"]["kernel"], np.full((3, 4), mean))
        np.testing.assert_array_equal(averaged["dense"]["bias"], np.zeros(4))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3 .*\[2, 4, 9\]"):
        average_params(workdir, [3, 9])
    _damage(workdir, 4)  # never skipped: the average of fewer is another model
    with pytest.raises(RuntimeError, match="checkpoints/4 of workdir"):
        average_params(workdir, [2, 4, 9])


def test_average_params_refuses_checkpoints_of_different_models(tmp_path):
    from trainer.checkpointing import average_params

    workdir = str(tmp_path / "run")
    _write(workdir, steps=(2,))
    wider = {"dense": {"kernel": np.ones((3, 5), np.float32), "bias": np.zeros(5, np.float32)}}
    state = {"step": np.int32(4), "params": wider, "opt_state": ADAMW.init(wider),
             "rng": np.zeros(2, np.uint32)}
    checkpointer = Checkpointer(workdir, async_save=False)
    checkpointer.save(4, state, _data_iter(), {"params_fingerprint": params_fingerprint(wider)})
    checkpointer.close()
    with pytest.raises(CheckpointMismatchError, match=r"steps 2 and 4 .*dense/kernel"):
        average_params(workdir, [2, 4])
