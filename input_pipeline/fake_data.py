"""Catalogue datasets filled with random examples, prepared offline in the real TFDS format.

Tests (and users without network access) get a real ``tfds.data_source`` of e.g. ``cifar10``
or ``wmt14_translate/de-en``: the catalogue builder's own features, splits and version, written
as ArrayRecord in ``data_dir``, only with random content. Reading it then exercises exactly the
code path of a dataset prepared on a connected machine.

Preparing real image datasets encodes PNGs with TensorFlow; here images are encoded with PIL
instead (reading never needs TensorFlow), which is why this module patches the encoder while
it writes.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

_WORDS = ("the", "a", "cat", "dog", "house", "runs", "sees", "big", "small", "red", "green",
          "blue", "and", "with", "under", "over", "today", "very", "old", "new")


def _png(self: Any, image: Any) -> bytes:
    array = np.asarray(image)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, "PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def _pil_image_encoding():
    original = tfds.features.Image.encode_example
    tfds.features.Image.encode_example = _png
    try:
        yield
    finally:
        tfds.features.Image.encode_example = original


def _sentence(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 10))))


def random_example(feature: Any, rng: np.random.Generator) -> Any:
    """A random value for a TFDS feature (images, labels, text, translations, tensors)."""
    features = tfds.features
    if isinstance(feature, features.FeaturesDict):
        return {k: random_example(v, rng) for k, v in feature.items()}
    if isinstance(feature, features.Translation):
        return {language: _sentence(rng) for language in feature.languages}
    if isinstance(feature, features.Image):
        # Unknown sizes vary per example, as in the real datasets (ImageNet, the Oxford sets),
        # so that pipelines which forget to resize, or batch a variable-size feature such as
        # a segmentation mask, fail on the fake data too.
        height, width, channels = (d if d is not None else int(rng.integers(24, 41))
                                   for d in feature.shape)
        return rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    if isinstance(feature, features.ClassLabel):
        return int(rng.integers(0, feature.num_classes))
    if isinstance(feature, features.Text):
        return _sentence(rng)
    if isinstance(feature, features.Tensor):
        shape = tuple(d if d is not None else 4 for d in feature.shape)
        return np.zeros(shape, dtype=feature.np_dtype)
    raise NotImplementedError(f"no random values for feature type {type(feature).__name__}")


def build_fake_dataset(name: str, data_dir: str,
                       num_examples: dict[str, int] | None = None, seed: int = 0) -> str:
    """Prepares catalogue dataset ``name`` with random examples in ``data_dir``; returns it."""
    num_examples = num_examples or {"train": 16, "test": 8}
    from input_pipeline.datasets import import_builder_module

    try:
        base_cls = tfds.builder_cls(name.split("/")[0])
    except tfds.core.registered.DatasetNotFoundError:
        import_builder_module(name)
        base_cls = tfds.builder_cls(name.split("/")[0])
    config_name = name.split("/")[1] if "/" in name else None

    class FakeBuilder(base_cls, skip_registration=True):
        def _split_generators(self, dl_manager):
            del dl_manager
            return {split: self._fake_examples(count, index)
                    for index, (split, count) in enumerate(num_examples.items())}

        def _fake_examples(self, count: int, split_index: int):
            rng = np.random.default_rng([seed, split_index])
            for i in range(count):
                yield i, random_example(self.info.features, rng)

    FakeBuilder.name = base_cls.name
    kwargs = {"config": config_name} if config_name else {}
    with _pil_image_encoding():
        FakeBuilder(data_dir=data_dir, file_format="array_record", **kwargs).download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return data_dir
