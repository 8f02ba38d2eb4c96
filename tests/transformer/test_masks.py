import jax.numpy as jnp
import numpy as np

from transformer import (
    combine_masks,
    make_attention_mask,
    make_causal_mask,
    make_padding_mask,
    make_segment_mask,
)


def test_causal_mask_is_lower_triangular():
    mask = make_causal_mask(4)
    assert mask.shape == (1, 1, 4, 4)
    np.testing.assert_array_equal(mask[0, 0], np.tril(np.ones((4, 4), bool)))


def test_padding_mask_hides_pad_tokens_on_both_sides():
    tokens = jnp.array([[5, 6, 0], [7, 0, 0]])
    mask = make_padding_mask(tokens)
    assert mask.shape == (2, 1, 3, 3)
    expected0 = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], bool)
    np.testing.assert_array_equal(mask[0, 0], expected0)
    assert mask[1, 0].sum() == 1


def test_cross_padding_mask_shapes():
    mask = make_padding_mask(jnp.array([[1, 2]]), jnp.array([[3, 0, 0, 4]]))
    np.testing.assert_array_equal(mask[0, 0], [[1, 0, 0, 1], [1, 0, 0, 1]])


def test_combine_masks_ands_and_ignores_none():
    causal = make_causal_mask(3)
    padding = make_attention_mask(jnp.array([[1, 1, 0]]), jnp.array([[1, 1, 0]]))
    combined = combine_masks(None, causal, padding)
    np.testing.assert_array_equal(combined[0, 0], [[1, 0, 0], [1, 1, 0], [0, 0, 0]])
    assert combine_masks(None, None) is None


def test_segment_mask_keeps_attention_within_each_packed_example():
    """Packed rows: query i may attend to key j only when both belong to the same example;
    queries and keys may have different lengths (cross-attention of packed targets)."""
    queries = jnp.array([[1, 1, 2]])
    keys = jnp.array([[1, 2, 2, 0]])
    mask = make_segment_mask(queries, keys)
    assert mask.shape == (1, 1, 3, 4)
    np.testing.assert_array_equal(mask[0, 0], [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0]])
