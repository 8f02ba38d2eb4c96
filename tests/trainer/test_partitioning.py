"""Placing host batches on the mesh, and when a run starts jax.distributed."""

import os
import socket

import jax
import numpy as np
import pytest

from trainer import partitioning


def test_host_batches_become_32_bit_global_arrays_and_strings_are_named():
    mesh = partitioning.make_mesh({"data": -1, "fsdp": 1})
    rows = 2 * jax.device_count()
    placed = partitioning.global_batch({"image": np.zeros((rows, 3)),
                                        "label": np.arange(rows)}, mesh)
    assert placed["image"].dtype == np.float32 and placed["label"].dtype == np.int32
    assert placed["label"].shape == (rows,)
    # TFDS string features (cifar10's "id", imagenet2012's "file_name") cannot be placed.
    with pytest.raises(ValueError, match=r"batch\['file_name'\] has dtype \|S"):
        partitioning.global_batch({"image": np.zeros((rows, 3)),
                                   "file_name": np.array([b"a.jpeg"] * rows)}, mesh)


def test_fsdp_splits_the_largest_divisible_dimension_of_large_leaves():
    """The FSDP rule on shapes alone: leaves under min_fsdp_size elements stay replicated (at
    it they are split), the largest dimension divisible by the fsdp size is split, ties go to
    the last, and a leaf with no divisible dimension is replicated."""
    from jax.sharding import PartitionSpec as P

    spec = partitioning._leaf_spec
    assert spec((4, 4), 4, min_fsdp_size=17) == P()
    assert spec((4, 4), 4, min_fsdp_size=16) == P(None, "fsdp")
    assert spec((8, 12, 6), 2, min_fsdp_size=1) == P(None, "fsdp", None)
    assert spec((12, 8, 9), 4, min_fsdp_size=1) == P("fsdp", None, None)
    assert spec((3, 5), 2, min_fsdp_size=1) == P()
    assert spec((8, 8), 1, min_fsdp_size=1) == P()


def test_batches_are_split_over_both_mesh_axes():
    """With fsdp=2 every device holds its own rows: the batch dimension is split over
    data and fsdp together, not replicated along fsdp."""
    mesh = partitioning.make_mesh({"data": -1, "fsdp": 2})
    placed = partitioning.global_batch({"x": np.arange(jax.device_count(), dtype=np.int32)},
                                       mesh)
    assert sorted(int(shard.data[0]) for shard in placed["x"].addressable_shards) == list(
        range(jax.device_count()))
    assert all(shard.data.shape == (1,) for shard in placed["x"].addressable_shards)


def test_pretrained_entries_replace_the_initialisation_and_the_rest_is_kept():
    """A distillation student loaded from an ``.npz`` lacks its feature projection, which
    keeps its initialisation (before: a pytree-structure error in ``device_put``); entries
    that do not fit the model are named."""
    from trainer import checkpointing
    from trainer.train import _start_from

    mesh = partitioning.make_mesh({"data": -1, "fsdp": 1})
    replicated = partitioning.replicated(mesh)
    initial = {"head": {"kernel": np.zeros((4, 2), np.float32)},
               "distill_projection": {"kernel": np.ones((4, 8), np.float32)}}
    shardings = jax.tree.map(lambda _: replicated, initial)
    fingerprint = checkpointing.params_fingerprint(initial)
    params = _start_from({"head": {"kernel": np.full((4, 2), 3.0, np.float32)}}, initial,
                         shardings, fingerprint)
    np.testing.assert_array_equal(params["head"]["kernel"], 3.0)
    np.testing.assert_array_equal(params["distill_projection"]["kernel"], 1.0)
    with pytest.raises(ValueError, match=r"do not fit the model: .*head/kernel"):
        _start_from({"head": {"kernel": np.zeros((4, 3), np.float32)}}, initial, shardings,
                    fingerprint)
    with pytest.raises(ValueError, match="not in this model.*'extra/kernel'"):
        _start_from({"extra": {"kernel": np.zeros(1, np.float32)}}, initial, shardings,
                    fingerprint)


_SRUN_STEP = {"SLURM_JOB_ID": "123", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
              "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}


def _cluster_environment(monkeypatch, variables):
    """Only ``variables`` of the cluster variables (the test may itself run under SLURM), and
    a ``jax.distributed.initialize`` that records its calls instead of connecting."""
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_")) or name in (
                "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize",
                        lambda *args, **kwargs: calls.append((args, kwargs)))
    return calls


@pytest.mark.parametrize("variables, multi_process", [
    ({}, False),
    # A salloc shell or an sbatch script run without srun: SLURM_JOB_ID but no step variables
    # (before: initialize() raised "coordinator_address should be defined").
    ({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "4"}, False),
    ({**_SRUN_STEP, "SLURM_NTASKS": "1"}, False),  # a one-task srun step: nothing to join
    (_SRUN_STEP, True),
    ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911",
      "OMPI_COMM_WORLD_SIZE": "1"}, False),
    ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.0.0.1:34911",
      "OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2"}, True),
    # One worker (a single-host TPU VM, or the variable left in a shell): nothing to join.
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    # JAX reads TPU_PROCESS_ADDRESSES first when both are set.
    ({"TPU_PROCESS_ADDRESSES": "10.0.0.1:8476", "TPU_WORKER_HOSTNAMES": "a,b"}, False),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.1:8080", "TPU_WORKER_HOSTNAMES": "a"}, True),
], ids=["no_cluster", "salloc_or_sbatch_shell", "srun_1_task", "srun_2_tasks", "mpirun_np1",
        "mpirun_np2", "tpu_pod", "one_tpu_worker", "tpu_process_addresses_first", "multislice"])
def test_initialize_only_in_a_job_of_several_tasks(monkeypatch, variables, multi_process):
    calls = _cluster_environment(monkeypatch, variables)
    partitioning.initialize_distributed()
    assert calls == ([((), {})] if multi_process else [])


@pytest.mark.parametrize("have_mpi4py", [True, False])
def test_an_open_mpi_5_job_joins_through_mpi4py_or_is_refused(monkeypatch, have_mpi4py):
    """Open MPI 5's mpirun sets OMPI_COMM_WORLD_SIZE but not OMPI_MCA_orte_hnp_uri, so JAX's
    Open MPI detection does not see it: before, each task trained alone as process 0 of 1."""
    import importlib.util

    calls = _cluster_environment(monkeypatch, {"OMPI_COMM_WORLD_SIZE": "4",
                                               "OMPI_COMM_WORLD_RANK": "1", "PRTE_LAUNCHED": "1"})
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        (object() if have_mpi4py else None) if name == "mpi4py" else find_spec(name, *args)))
    if have_mpi4py:
        partitioning.initialize_distributed()
        assert calls == [((), {"cluster_detection_method": "mpi4py"})]
    else:
        with pytest.raises(ValueError, match=r"OMPI_COMM_WORLD_SIZE=4 Open MPI tasks.*"
                                             r"pip install mpi4py.*--num_processes"):
            partitioning.initialize_distributed()
        assert calls == []
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")  # a one-task job: nothing to join
    calls.clear()
    partitioning.initialize_distributed()
    assert calls == []


def test_an_srun_step_is_what_jax_detects_as_slurm(monkeypatch):
    """The SLURM variables required here are the ones JAX's own detection requires."""
    from jax._src.clusters import SlurmCluster

    _cluster_environment(monkeypatch, _SRUN_STEP)
    assert SlurmCluster.is_env_present() and partitioning._cluster_detected()
    monkeypatch.delenv("SLURM_STEP_NODELIST")
    assert not SlurmCluster.is_env_present() and not partitioning._cluster_detected()


def test_a_bad_task_count_is_named(monkeypatch):
    _cluster_environment(monkeypatch, {**_SRUN_STEP, "SLURM_NTASKS": "two"})
    with pytest.raises(ValueError, match=r"SLURM_NTASKS='two' must be an integer"):
        partitioning.initialize_distributed()


@pytest.mark.parametrize("arguments, message", [
    # --process_id alone used to be ignored: the process ran as process 0 of 1.
    (dict(process_id=3), "need all of --coordinator_address, --num_processes and --process_id"),
    (dict(coordinator_address="h:1234", num_processes=2, process_id=2),
     r"--process_id=2 must be in \[0, --num_processes=2\)"),
])
def test_incomplete_or_inconsistent_process_flags_are_refused(monkeypatch, arguments, message):
    calls = _cluster_environment(monkeypatch, {})
    with pytest.raises(ValueError, match=message):
        partitioning.initialize_distributed(**arguments)
    assert calls == []


@pytest.mark.parametrize("address", ["10.0.0.1", "10.0.0.1:", ":1234", "h:port", "h:70000"])
def test_a_coordinator_address_without_host_and_port_is_refused(monkeypatch, address):
    # JAX itself raised an IndexError for a missing port, naming no flag.
    calls = _cluster_environment(monkeypatch, {})
    with pytest.raises(ValueError, match=rf"--coordinator_address='{address}' must be "
                                         r"host:port \(port 1-65535\)"):
        partitioning.initialize_distributed(address, 2, 1)
    assert calls == []


def test_process_zero_refuses_a_coordinator_port_another_program_listens_on(monkeypatch):
    # JAX's coordinator died of a segmentation fault there, its workers waiting 5 minutes.
    calls = _cluster_environment(monkeypatch, {})
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ValueError, match=rf"--coordinator_address='127.0.0.1:{port}': "
                                             rf"port {port} is already in use on this machine"):
            partitioning.initialize_distributed(f"127.0.0.1:{port}", 2, 0)
        assert calls == []
        # Only process 0 listens there: the others connect to it.
        partitioning.initialize_distributed(f"127.0.0.1:{port}", 2, 1)
    assert len(calls) == 1
    # A free port passes on process 0 (the port just closed).
    partitioning.initialize_distributed(f"127.0.0.1:{port}", 2, 0)
    assert len(calls) == 2
