"""Test-wide setup, before JAX starts: 8 simulated CPU devices, so sharding tests run anywhere,
LLVM's quickest compiles (tests/xla_flags.py), one persistent compilation cache for the whole
run, each xdist worker on its own CPUs, and the longest tests sent out first."""

import os
import shutil
import tempfile

from tests.xla_flags import with_fast_compile, xla_flags

os.environ["XLA_FLAGS"] = with_fast_compile(os.environ.get("XLA_FLAGS", xla_flags(8)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Many tests train the same tiny configs, in this process and in launcher subprocesses (kill
# and restart, multi-host, notebooks), and each process compiled the same steps again. JAX's
# persistent compilation cache, read from these variables by every process that imports JAX
# (xdist workers and subprocesses inherit them), compiles each program once per test run. A
# fresh directory per run, removed at the end, so no run depends on a previous one; a
# JAX_COMPILATION_CACHE_DIR set by the caller is used as it is (and kept).
_CACHE_CREATED_HERE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_CREATED_HERE = tempfile.mkdtemp(prefix="vitkd-test-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_CREATED_HERE
# Cache every program, however quick to compile (JAX's default skips those under 1 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def _pin_xdist_worker_to_its_share_of_cpus() -> None:
    """Each xdist worker (and every subprocess it starts) runs on its own share of the CPUs.

    Why: each JAX process sizes its thread pools to the CPUs it may use, so two workers on
    two cores ran two pools each, taking the cores from each other. Measured on this
    project's 2-core machine on 2026-11-29, `XLA_FLAGS=--xla_force_host_platform_device_count=8
    pytest -q -n 2 -m "not acceptance" tests/trainer/test_resume.py tests/trainer/
    test_launcher.py tests/trainer/test_devices.py tests/trainer/test_accumulation.py`, run
    four times alternating, with `VITKD_TEST_PIN_CPUS=0` and without: 264 and 265 s unpinned,
    228 and 231 s pinned (474 against 413 s of user CPU). The whole `make test` pytest run,
    one run each (the machine's noise is about 15%): 24 min 28 s without this and RUN_FIRST
    (below), 23 min 3 s with them.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if (os.environ.get("VITKD_TEST_PIN_CPUS") == "0" or not worker.startswith("gw")
            or workers < 2 or not hasattr(os, "sched_setaffinity")):
        return
    cpus = sorted(os.sched_getaffinity(0))
    share = cpus[int(worker[2:]) % workers::workers]
    if share:  # more workers than CPUs: the workers past the last CPU keep all of them
        os.sched_setaffinity(0, share)


_pin_xdist_worker_to_its_share_of_cpus()

import pytest  # noqa: E402


def pytest_unconfigure(config):
    if _CACHE_CREATED_HERE is not None:
        shutil.rmtree(_CACHE_CREATED_HERE, ignore_errors=True)


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """The digits dataset built once per test session (per xdist worker), in a temporary
    data_dir."""
    from input_pipeline import prepare_digits

    return prepare_digits(str(tmp_path_factory.mktemp("tfds")))


# The longest tests (`make test`'s --durations list: the digits run, 3-5 minutes, and the
# notebooks, about 3 minutes each) go out to the workers first, so that none of them is left
# running alone at the end while the other worker's CPU idles.
RUN_FIRST = ("tests/trainer/test_digits_accuracy.py", "tests/notebooks/test_notebooks.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return RUN_FIRST.index(path) if path in RUN_FIRST else len(RUN_FIRST)

    items.sort(key=rank)  # stable: the order within each group stays as collected
