"""TFDS sources: the local digits dataset, the catalogue path offline, clear errors."""

import re

import numpy as np
import pytest

from input_pipeline import DatasetNotFoundError, get_source
from input_pipeline.digits import split_indices
from input_pipeline.fake_data import build_fake_dataset


def test_digits_splits_fixed_disjoint_and_complete(digits_dir):
    train, test = get_source("digits", "train", digits_dir), get_source("digits", "test",
                                                                         digits_dir)
    assert (len(train), len(test)) == (1438, 359)
    indices = split_indices()
    assert not set(indices["train"]) & set(indices["test"])
    assert len(set(indices["train"]) | set(indices["test"])) == 1797
    np.testing.assert_array_equal(indices["test"], split_indices()["test"])  # deterministic
    example = train[0]
    assert example["image"].shape == (8, 8, 1) and example["image"].dtype == np.uint8
    labels = np.array([test[i]["label"] for i in range(len(test))])
    assert set(labels) == set(range(10))  # stratified: every class in the test split
    images = np.stack([train[i]["image"] for i in range(50)])
    assert images.max() == 255 and images.min() == 0


def test_digits_examples_match_sklearn(digits_dir):
    """The stored test split holds exactly sklearn's images and labels at the split's indices
    (TFDS stores a split in its own shuffled order)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    source = get_source("digits", "test", digits_dir)
    stored = sorted((source[i]["image"].tobytes(), int(source[i]["label"]))
                    for i in range(len(source)))
    expected = sorted(
        (np.round(digits.images[i] * 255 / 16).astype(np.uint8)[..., None].tobytes(),
         int(digits.target[i])) for i in split_indices()["test"])
    assert stored == expected


def test_digits_are_decoded_once_in_tfds_order(digits_dir):
    """The digits source is held in memory, example for example the TFDS data source."""
    import tensorflow_datasets as tfds

    from input_pipeline.datasets import InMemorySource

    source = get_source("digits", "train[:10%]", digits_dir)
    assert isinstance(source, InMemorySource) and "144 examples" in repr(source)
    tfds_source = tfds.builder("digits", data_dir=digits_dir).as_data_source(
        split="train[:10%]")
    assert len(source) == len(tfds_source) == 144
    for i in (0, 77, 143):
        np.testing.assert_array_equal(source[i]["image"], tfds_source[i]["image"])
        assert source[i]["label"] == tfds_source[i]["label"]


def test_missing_catalogue_dataset_names_it_and_how_to_prepare(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        get_source("cifar10", "train", str(tmp_path))
    message = str(error.value)
    assert "'cifar10'" in message and str(tmp_path) in message
    assert "tfds build cifar10 --file_format=array_record" in message
    assert not list(tmp_path.iterdir())  # nothing written while failing
    assert "manual" not in message


def test_a_dataset_downloaded_by_hand_says_which_files_and_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as error:
        get_source("imagenet2012", "validation", str(tmp_path))
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert ("tfds build imagenet2012 --file_format=array_record --data_dir=/some/dir "
            "--manual_dir=/some/manual_dir") in message


@pytest.mark.parametrize("config, manual_files", [("de-en", None),
                                                  ("cs-en", "data-plaintext-format.0.tar")])
def test_a_builder_config_is_built_alone_with_its_own_manual_files(tmp_path, config,
                                                                   manual_files):
    """`tfds build wmt14_translate` would build every language pair, cs-en's CzEng (a manual
    download) included; WMT's class-wide instructions say only "some of the configs" need one:
    de-en needs none."""
    name = f"wmt14_translate/{config}"
    with pytest.raises(DatasetNotFoundError) as error:
        get_source(name, "train", str(tmp_path))
    message = str(error.value)
    command = f"tfds build {name} --file_format=array_record --data_dir=/some/dir"
    assert f"then copy /some/dir/{name} to {tmp_path}/{name} " in message
    if manual_files is None:
        assert command + "\n" in message and "manual_dir" not in message
        assert "by hand" not in message
    else:
        assert command + " --manual_dir=/some/manual_dir\n" in message
        assert manual_files in message and "czeng" in message


@pytest.mark.parametrize("name", ["mnist_typo", "cifar_100"])
def test_a_misspelt_name_whose_first_word_is_a_tfds_module_is_named(tmp_path, name):
    """The module found by the first word (mnist.py, cifar.py) does not define the name: TFDS's
    own DatasetNotFoundError used to escape, without the config field."""
    with pytest.raises(ValueError, match=rf"config.dataset.name='{name}' is not in the TFDS "
                                         "catalogue; expected a TFDS name"):
        get_source(name, "train", str(tmp_path))


@pytest.mark.parametrize("name, listed", [
    ("wmt14_translate/xx-yy", "BuilderConfig xx-yy not found"),
    ("cifar10:9.9.9", "only: 3.0.2"),
])
def test_a_config_or_version_the_dataset_lacks_is_named(tmp_path, name, listed):
    """TFDS's own error (a ValueError, or an AssertionError for the version) used to escape
    without the config field; its list of valid choices is kept."""
    with pytest.raises(ValueError, match=rf"config.dataset.name='{re.escape(name)}': .*{listed}"):
        get_source(name, "train", str(tmp_path))


@pytest.mark.parametrize("name, check", [
    ("cifar10", lambda e: e["image"].shape == (32, 32, 3) and 0 <= e["label"] < 10),
    ("wmt14_translate/de-en", lambda e: isinstance(e["en"], (bytes, str)) and len(e["de"]) > 0),
])
def test_catalogue_dataset_through_the_real_tfds_path_offline(tmp_path, name, check):
    """A catalogue dataset prepared offline with random content, read by tfds.data_source."""
    build_fake_dataset(name, str(tmp_path), {"train": 6, "test": 3})
    source = get_source(name, "train", str(tmp_path))
    assert len(source) == 6 and check(source[2])
    assert len(get_source(name, "test", str(tmp_path))) == 3


def test_unknown_split_and_name(digits_dir):
    with pytest.raises(ValueError, match="no split 'validation'"):
        get_source("digits", "validation", digits_dir)
    with pytest.raises(ValueError, match="not in the TFDS catalogue"):
        get_source("no_such_dataset_xyz", "train", digits_dir)


@pytest.mark.parametrize("split, size", [("train+test", 1797), ("train[:50%]+test", 1078),
                                         ("test[-9:]", 9), ("train[:10%]", 144)])
def test_tfds_split_expressions_are_read_as_tfds_reads_them(digits_dir, split, size):
    assert len(get_source("digits", split, digits_dir)) == size


@pytest.mark.parametrize("split, tfds_says", [
    ("TRAIN", "Unknown split 'TRAIN'"), ("train+validation", "Unknown split 'validation'"),
    ("train[:abc]", "Error parsing split"), ("train[:200%]", "Error parsing split"),
    ("train[5:2]", "__len__"),
])
def test_bad_split_expressions_name_the_dataset_and_its_splits(digits_dir, split, tfds_says):
    with pytest.raises(ValueError) as error:
        get_source("digits", split, digits_dir)
    message = str(error.value)
    assert f"dataset 'digits' has no split {split!r}" in message
    assert tfds_says in message and "['test', 'train']" in message
