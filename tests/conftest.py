"""Test-wide setup, before JAX starts: 8 simulated CPU devices, so sharding tests run anywhere,
and one persistent compilation cache for the whole run."""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
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
