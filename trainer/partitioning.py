"""Devices and hosts: multi-host start-up, the device mesh and the sharding rules.

One ``jax.sharding.Mesh`` spans every device of every host with two axes, ``data`` and
``fsdp``. Batches are split along both (pure data parallelism when ``fsdp`` is 1). Parameters
and optimizer state are replicated, or — the FSDP rule — a leaf with at least
``min_fsdp_size`` elements is split along ``fsdp`` on its largest divisible dimension.
"""

from __future__ import annotations

import errno
import importlib.util
import math
import os
import socket
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Calls ``jax.distributed.initialize`` when this is a multi-host run.

    Explicit arguments win; otherwise it is called without arguments, for JAX to auto-detect
    the cluster, in a TPU pod and in a SLURM step (``srun``) or Open MPI job (``mpirun``) of
    more than one task (``_cluster_detected``; Open MPI 5 through mpi4py, ``_open_mpi_5_job``).
    A single process is left alone, also one started in a SLURM allocation without ``srun`` (a
    ``salloc`` shell, an ``sbatch`` script).
    """
    given = (coordinator_address, num_processes, process_id)
    if any(value is not None for value in given):  # --process_id alone included
        if None in given:
            raise ValueError(
                "multi-host runs need all of --coordinator_address, --num_processes and "
                f"--process_id; got {coordinator_address!r}, {num_processes!r}, {process_id!r}"
            )
        if not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                             f"{num_processes})")
        _check_coordinator_address(coordinator_address, process_id)
        # CPU devices of different processes talk through gloo (no effect on GPUs/TPUs).
        # Nothing may touch the backend before initialize(), so this is set unconditionally.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif _cluster_detected():
        jax.distributed.initialize()
    elif _open_mpi_5_job():
        jax.distributed.initialize(cluster_detection_method="mpi4py")
    logging.info(
        "process %d of %d; %d local / %d global devices",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )


def _check_coordinator_address(address: str, process_id: int) -> None:
    """Refuses a ``--coordinator_address`` that is not ``host:port`` and, on process 0, which
    runs the coordinator, a port that another program already listens on.

    Why here: JAX fails on either with no word about the flag (an ``IndexError`` for a
    missing port; for a taken port, process 0 dies of a segmentation fault after gRPC's "Failed
    to add port to server", and the other processes wait for it for 5 minutes).
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--coordinator_address={address!r} must be host:port (port 1-65535), "
                         "e.g. 10.0.0.1:1234: the address of process 0")
    if process_id == 0 and _port_in_use(int(port)):
        raise ValueError(
            f"--coordinator_address={address!r}: port {port} is already in use on this "
            "machine (process 0 runs the coordinator there; another run, or one still "
            "exiting?); choose another port for every process")


def _port_in_use(port: int) -> bool:
    """Whether another program listens on ``port`` here, on any interface: the coordinator
    listens on all of them ("[::]:port"). With SO_REUSEADDR, as gRPC binds, so that a port
    left in TIME_WAIT by a finished run counts as free. Any other failure to bind is left to
    JAX to report."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # a machine without IPv6
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # IPv4 as well, as "[::]" does
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                probe.bind((host, port))
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    return True
                continue
            return False
    return False


# What JAX's own detection requires (jax/_src/clusters/slurm_cluster.py, ompi_cluster.py).
# SLURM_STEP_NODELIST, SLURM_PROCID and SLURM_LOCALID are set inside an srun step only: a
# salloc shell or an sbatch script has SLURM_JOB_ID (and SLURM_NTASKS) without them, and there
# jax.distributed.initialize() fails ("coordinator_address should be defined").
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
_OMPI_VARS = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE")  # set by mpirun / mpiexec


# The TPU workers as JAX's GKE TPU detection reads them: the first of these that is set.
_TPU_WORKER_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")


def _task_count(variable: str) -> int:
    value = os.environ[variable]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {variable}={value!r} must be an integer "
                         "(the job's number of tasks)") from None


def _cluster_detected() -> bool:
    """Whether this process is one of several that JAX's auto-detection will find.

    A TPU pod by its variables (a multislice job, or a worker list of more than one host);
    SLURM and Open MPI only with the variables JAX reads and more than one task
    (``SLURM_NTASKS``, ``OMPI_COMM_WORLD_SIZE``): one task needs no coordinator.
    """
    if "MEGASCALE_COORDINATOR_ADDRESS" in os.environ:
        return True
    workers = next((os.environ[name] for name in _TPU_WORKER_VARS if name in os.environ), None)
    if workers is not None:
        return len([host for host in workers.split(",") if host.strip()]) > 1
    for variables, count in ((_SLURM_VARS, "SLURM_NTASKS"), (_OMPI_VARS, "OMPI_COMM_WORLD_SIZE")):
        if all(name in os.environ for name in variables) and _task_count(count) > 1:
            return True
    return False


def _open_mpi_5_job() -> bool:
    """Whether this is one task of several started by Open MPI 5's ``mpirun`` (PRRTE).

    Open MPI 5 no longer sets ``OMPI_MCA_orte_hnp_uri``, the variable JAX's Open MPI detection
    takes the coordinator from (jax-ml/jax#14576); JAX's ``mpi4py`` detection finds it
    instead, so this needs mpi4py. Without it each task would train alone as process 0 of 1,
    so that is refused, saying what to pass.
    """
    if "OMPI_COMM_WORLD_SIZE" not in os.environ or "OMPI_MCA_orte_hnp_uri" in os.environ:
        return False
    tasks = _task_count("OMPI_COMM_WORLD_SIZE")
    if tasks < 2:
        return False
    if importlib.util.find_spec("mpi4py") is None:
        raise ValueError(
            f"this is one of OMPI_COMM_WORLD_SIZE={tasks} Open MPI tasks without "
            "OMPI_MCA_orte_hnp_uri (Open MPI 5), whose coordinator JAX finds only through "
            "mpi4py: `pip install mpi4py`, or pass --coordinator_address=HOST_OF_RANK_0:PORT "
            "--num_processes=$OMPI_COMM_WORLD_SIZE --process_id=$OMPI_COMM_WORLD_RANK")
    return True


def make_mesh(mesh_shape: dict[str, int]) -> Mesh:
    """A mesh over all devices with axes ``MESH_AXES``; one size may be -1 (the rest).

    Raises ``ValueError`` when the sizes do not multiply to the device count.
    """
    unknown = set(mesh_shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh_shape has unknown axes {sorted(unknown)}; expected {MESH_AXES}")
    sizes = [int(mesh_shape.get(axis, 1)) for axis in MESH_AXES]
    devices = jax.device_count()
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh_shape={dict(mesh_shape)}: at most one axis may be -1")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if known < 1 or devices % known:
            raise ValueError(
                f"mesh_shape={dict(mesh_shape)} does not divide the {devices} devices"
            )
        sizes[sizes.index(-1)] = devices // known
    if math.prod(sizes) != devices or min(sizes) < 1:
        raise ValueError(
            f"mesh_shape={dict(mesh_shape)} gives {math.prod(sizes)} devices but there are "
            f"{devices}; the axis sizes must multiply to the device count"
        )
    return jax.make_mesh(tuple(sizes), MESH_AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _leaf_spec(shape: tuple[int, ...], fsdp_size: int, min_fsdp_size: int) -> PartitionSpec:
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_fsdp_size:
        return PartitionSpec()
    # Largest dimension that divides evenly; ties go to the last (usually the output) axis.
    candidates = [(dim, i) for i, dim in enumerate(shape) if dim % fsdp_size == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    spec = [None] * len(shape)
    spec[axis] = "fsdp"
    return PartitionSpec(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh, min_fsdp_size: int) -> Any:
    """``NamedSharding`` for every leaf of a (shape-only) train state by the FSDP rule."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, _leaf_spec(tuple(leaf.shape), fsdp_size, min_fsdp_size)),
        abstract_state,
    )


def check_batch_size(global_batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    """The global batch must split evenly over devices and hosts."""
    devices = mesh.devices.size
    if global_batch_size < 1 or global_batch_size % devices:
        raise ValueError(
            f"{field}={global_batch_size} must be a positive multiple of the number of devices "
            f"({devices})"
        )


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy batches -> one global array per key, sharded along the batch."""
    sharding = batch_sharding(mesh)

    def place(path, x):
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise ValueError(
                f"batch[{jax.tree_util.keystr(path)[1:-1]}] has dtype {x.dtype}: only numeric "
                "and boolean arrays can be placed on devices (a string field of the dataset "
                "must be dropped by the task's preprocessing)")
        # 64-bit host data (numpy's default ints) becomes JAX's 32-bit types here, once.
        if x.dtype == np.int64:
            x = x.astype(np.int32)
        elif x.dtype == np.float64:
            x = x.astype(np.float32)
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree_util.tree_map_with_path(place, local_batch)
