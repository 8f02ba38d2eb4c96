import pytest

from input_pipeline import prepare_digits


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """The digits dataset built once per test session, in a temporary data_dir."""
    return prepare_digits(str(tmp_path_factory.mktemp("tfds")))
