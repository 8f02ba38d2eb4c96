"""Test-wide setup: 8 simulated CPU devices before JAX starts, so sharding tests run anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """The digits dataset built once per test session (per xdist worker), in a temporary
    data_dir."""
    from input_pipeline import prepare_digits

    return prepare_digits(str(tmp_path_factory.mktemp("tfds")))
