"""PartiallyLabelled: one source of labelled and unlabelled examples for grain."""

import numpy as np
import pytest

from input_pipeline import PartiallyLabelled, make_train_loader


def _examples(labels, offset):
    return [{"image": np.full((2, 2, 1), offset + i, np.float32), "label": np.int64(label)}
            for i, label in enumerate(labels)]


def test_unlabelled_examples_lose_their_labels_and_weight():
    source = PartiallyLabelled(_examples([3, 1], 0), _examples([7, 8, 9], 10))
    assert len(source) == 5 and "2 labelled, 3 unlabelled" in repr(source)
    got = [source[i] for i in range(5)]
    assert [float(e["label_weight"]) for e in got] == [1, 1, 0, 0, 0]
    assert [int(e["label"]) for e in got] == [3, 1, 0, 0, 0]
    assert [float(e["image"][0, 0, 0]) for e in got] == [0, 1, 10, 11, 12]
    assert all(e["label"].dtype == np.int64 for e in got)
    # An unlabelled source without labels works too.
    bare = PartiallyLabelled(_examples([3], 0), [{"image": np.zeros((2, 2, 1), np.float32)}])
    assert int(bare[1]["label"]) == 0 and float(bare[1]["label_weight"]) == 0
    with pytest.raises(IndexError, match="out of range"):
        source[5]


def test_unlabelled_examples_get_zero_labels_of_the_labelled_shape_and_dtype():
    """Multi-label or soft targets ([K] per example): the unlabelled examples' zeros must be
    [K] too, in the labelled dtype, or the two parts cannot be stacked into one batch."""
    def vectors(offset, dtype):
        return [{"image": np.full((2, 2, 1), offset + i, np.float32),
                 "label": np.eye(3, dtype=dtype)[i % 3]} for i in range(4)]

    source = PartiallyLabelled(vectors(0, np.float32), vectors(100, np.int64))
    unlabelled = source[5]["label"]
    assert unlabelled.shape == (3,) and unlabelled.dtype == np.float32
    assert not unlabelled.any()
    batch = next(iter(make_train_loader(source, global_batch_size=8, seed=0)))
    assert batch["label"].shape == (8, 3)
    np.testing.assert_array_equal(batch["label"].sum(1), batch["label_weight"])


def test_empty_sources_are_refused():
    with pytest.raises(ValueError, match="labelled source is empty"):
        PartiallyLabelled([], _examples([1], 0))
    with pytest.raises(ValueError, match="unlabelled source is empty"):
        PartiallyLabelled(_examples([1], 0), [])


def test_batches_mix_both_parts_in_one_shuffled_stream():
    source = PartiallyLabelled(_examples([1] * 4, 0), _examples([2] * 12, 100))
    loader = iter(make_train_loader(source, global_batch_size=8, seed=0))
    batches = [next(loader) for _ in range(4)]  # two epochs
    weights = np.concatenate([b["label_weight"] for b in batches])
    images = np.concatenate([b["image"][:, 0, 0, 0] for b in batches])
    assert weights.sum() == 8  # each labelled example once per epoch
    np.testing.assert_array_equal(weights == 1, images < 100)
    assert np.all(np.concatenate([b["label"] for b in batches])[weights == 0] == 0)


def test_only_the_kept_keys_reach_the_batcher():
    """TFDS examples carry strings and variable-size arrays that cannot be batched."""
    def tfds_like(labels, offset):
        return [{**e, "file_name": f"img_{i}.jpg".encode(),
                 "segmentation_mask": np.zeros((3 + i, 2, 1), np.uint8)}
                for i, e in enumerate(_examples(labels, offset))]

    source = PartiallyLabelled(tfds_like([1] * 4, 0), tfds_like([2] * 4, 100))
    assert source[0].keys() == source[7].keys() == {"image", "label", "label_weight"}
    batch = next(iter(make_train_loader(source, global_batch_size=8, seed=0)))
    assert batch.keys() == {"image", "label", "label_weight"}
    everything = PartiallyLabelled(tfds_like([1], 0), tfds_like([2], 100), keys=None)
    assert "file_name" in everything[1]
    with pytest.raises(ValueError, match=r"example 1 has no \['mask'\]"):
        PartiallyLabelled(_examples([1], 0), _examples([2], 9), keys=("mask", "label"))[1]
    with pytest.raises(ValueError, match="must include 'label'"):
        PartiallyLabelled(_examples([1], 0), _examples([2], 9), keys=("image",))
