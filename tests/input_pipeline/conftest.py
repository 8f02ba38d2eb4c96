import pytest

from input_pipeline import prepare_digits


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    return prepare_digits(str(tmp_path_factory.mktemp("tfds_digits")))
