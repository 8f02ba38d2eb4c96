"""Bad batches at the trainer's boundary fail with what is wrong and what was expected."""

import numpy as np
import pytest

from tests.trainer.tiny import tiny_digits_config, tiny_seq2seq_config
from trainer.tasks import create_task


@pytest.fixture(scope="module")
def image_task(tmp_path_factory):
    return create_task(tiny_digits_config(str(tmp_path_factory.mktemp("unused"))))


@pytest.mark.parametrize("change, message", [
    (lambda b: {**b, "image": b["image"][..., 0]}, r"\[batch, 8, 8, 1\]"),
    (lambda b: {**b, "image": np.zeros((4, 16, 16, 1), np.float32)}, r"got \(4, 16, 16, 1\)"),
    (lambda b: {**b, "image": np.zeros((4, 8, 8, 3), np.float32)}, "num_channels=1"),
    (lambda b: {**b, "image": b["image"].astype(np.uint8)}, "must be float"),
    (lambda b: {**b, "label": np.array([0, 1, 10, 2])}, r"labels must be in \[0, "
                                                         r"num_classes=10\).*\[0, 10\]"),
    (lambda b: {**b, "label": np.array([0, -1, 3, 2])}, "labels must be in"),
])
def test_bad_image_batches(image_task, change, message):
    batch = image_task.dummy_batch(4)
    image_task.check_batch(batch, "training batch")  # the good batch passes
    with pytest.raises(ValueError, match=message):
        image_task.check_batch(change(batch), "training batch")


def test_padding_labels_are_not_checked(image_task):
    batch = {**image_task.dummy_batch(2), "label": np.array([3, 99]),
             "mask": np.array([1.0, 0.0])}
    image_task.check_batch(batch, "eval batch")


@pytest.mark.parametrize("key", ["inputs", "targets"])
def test_token_ids_at_or_beyond_the_vocabulary(key):
    task = create_task(tiny_seq2seq_config())
    batch = task.dummy_batch(2)
    batch[key] = batch[key].copy()
    batch[key][1, 0] = task.vocab_size
    with pytest.raises(ValueError, match=rf"{key} token ids must be in \[0, vocab_size=16\)"):
        task.check_batch(batch, "training batch")
