"""Placing host batches on the mesh."""

import jax
import numpy as np
import pytest

from trainer import partitioning


def test_host_batches_become_32_bit_global_arrays_and_strings_are_named():
    mesh = partitioning.make_mesh({"data": -1, "fsdp": 1})
    rows = 2 * jax.device_count()
    placed = partitioning.global_batch({"image": np.zeros((rows, 3)),
                                        "label": np.arange(rows)}, mesh)
    assert placed["image"].dtype == np.float32 and placed["label"].dtype == np.int32
    assert placed["label"].shape == (rows,)
    # TFDS string features (cifar10's "id", imagenet2012's "file_name") cannot be placed.
    with pytest.raises(ValueError, match=r"batch\['file_name'\] has dtype \|S"):
        partitioning.global_batch({"image": np.zeros((rows, 3)),
                                   "file_name": np.array([b"a.jpeg"] * rows)}, mesh)


def test_pretrained_entries_replace_the_initialisation_and_the_rest_is_kept():
    """A distillation student loaded from an ``.npz`` lacks its feature projection, which
    keeps its initialisation (before: a pytree-structure error in ``device_put``); entries
    that do not fit the model are named."""
    from trainer import checkpointing
    from trainer.train import _start_from

    mesh = partitioning.make_mesh({"data": -1, "fsdp": 1})
    replicated = partitioning.replicated(mesh)
    initial = {"head": {"kernel": np.zeros((4, 2), np.float32)},
               "distill_projection": {"kernel": np.ones((4, 8), np.float32)}}
    shardings = jax.tree.map(lambda _: replicated, initial)
    fingerprint = checkpointing.params_fingerprint(initial)
    params = _start_from({"head": {"kernel": np.full((4, 2), 3.0, np.float32)}}, initial,
                         shardings, fingerprint)
    np.testing.assert_array_equal(params["head"]["kernel"], 3.0)
    np.testing.assert_array_equal(params["distill_projection"]["kernel"], 1.0)
    with pytest.raises(ValueError, match=r"do not fit the model: .*head/kernel"):
        _start_from({"head": {"kernel": np.zeros((4, 3), np.float32)}}, initial, shardings,
                    fingerprint)
    with pytest.raises(ValueError, match="not in this model.*'extra/kernel'"):
        _start_from({"extra": {"kernel": np.zeros(1, np.float32)}}, initial, shardings,
                    fingerprint)
