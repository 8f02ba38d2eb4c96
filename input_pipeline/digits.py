"""scikit-learn's handwritten digits as a local TFDS dataset, ``digits`` (no download).

1,797 real 8×8 grey images of the digits 0–9 (the UCI optical-recognition test set) ship
inside scikit-learn. The builder writes them in ArrayRecord format, so
``tfds.data_source("digits", data_dir=...)`` reads them with grain and without TensorFlow,
exactly like a catalogue dataset. The split is fixed: a seeded, per-class stratified 80/20
split (1,438 train / 359 test).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
TEST_FRACTION = 0.2
SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
    """Example indices of each split: the same on every machine and every call."""
    from sklearn.datasets import load_digits

    labels = load_digits().target
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * TEST_FRACTION))
        test.extend(members[:n_test])
        train.extend(members[n_test:])
    return {"train": np.sort(np.array(train)), "test": np.sort(np.array(test))}


class Digits(tfds.core.GeneratorBasedBuilder):
    """The ``digits`` dataset: ``image`` uint8 [8, 8, 1] (0..255), ``label`` in 0..9."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 80/20 split of sklearn.datasets.load_digits."}

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly: dataset_info_from_configs wants a metadata folder we don't need.
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's 8x8 handwritten digits, 16 grey levels scaled to 0..255.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(indices)
                for split, indices in split_indices().items()}

    def _generate_examples(self, indices: np.ndarray):
        from sklearn.datasets import load_digits

        digits = load_digits()
        for index in indices:
            # Pixel values are 0..16; scale to the 0..255 range image pipelines expect.
            image = np.round(digits.images[index] * (255.0 / 16.0)).astype(np.uint8)
            yield int(index), {"image": image[..., None], "label": int(digits.target[index])}


def default_data_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def prepare_digits(data_dir: str | None = None) -> str:
    """Builds ``digits`` in ``data_dir`` (ArrayRecord) unless it is there; returns data_dir."""
    data_dir = data_dir or default_data_dir()
    builder = Digits(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare()
    return data_dir
