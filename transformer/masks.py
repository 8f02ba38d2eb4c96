"""Boolean attention masks.

Convention: a mask is a boolean array broadcastable to ``[batch, heads, q_length, kv_length]``
where ``True`` means *may attend*. Helpers here build the usual masks and combine them.
"""

from __future__ import annotations

import jax.numpy as jnp

PAD_ID = 0


def make_attention_mask(query_valid: jnp.ndarray, key_valid: jnp.ndarray) -> jnp.ndarray:
    """Outer product of per-position validity.

    Args:
      query_valid: ``[batch, q_length]`` bool (or 0/1).
      key_valid: ``[batch, kv_length]`` bool (or 0/1).

    Returns:
      ``[batch, 1, q_length, kv_length]`` bool.
    """
    return jnp.logical_and(query_valid[:, None, :, None], key_valid[:, None, None, :]).astype(bool)


def make_padding_mask(
    query_tokens: jnp.ndarray, key_tokens: jnp.ndarray | None = None, pad_id: int = PAD_ID
) -> jnp.ndarray:
    """Mask that hides padding tokens (``pad_id``) on both the query and the key side.

    Args:
      query_tokens: ``[batch, q_length]`` int token ids.
      key_tokens: ``[batch, kv_length]`` int token ids; defaults to ``query_tokens``
        (self-attention).

    Returns:
      ``[batch, 1, q_length, kv_length]`` bool.
    """
    key_tokens = query_tokens if key_tokens is None else key_tokens
    return make_attention_mask(query_tokens != pad_id, key_tokens != pad_id)


def make_segment_mask(query_segments: jnp.ndarray, key_segments: jnp.ndarray) -> jnp.ndarray:
    """Packed sequences: position ``i`` may attend to ``j`` only within the same segment.

    Args:
      query_segments: ``[batch, q_length]`` segment ids (1, 2, ... per packed example).
      key_segments: ``[batch, kv_length]``.

    Returns:
      ``[batch, 1, q_length, kv_length]`` bool.
    """
    return jnp.equal(query_segments[:, None, :, None], key_segments[:, None, None, :])


def make_causal_mask(length: int) -> jnp.ndarray:
    """Lower-triangular mask: position ``i`` may attend to positions ``<= i``.

    Returns:
      ``[1, 1, length, length]`` bool.
    """
    positions = jnp.arange(length)
    return (positions[None, :] <= positions[:, None])[None, None]


def combine_masks(*masks: jnp.ndarray | None) -> jnp.ndarray | None:
    """Logical AND of the given masks; ``None`` entries are ignored.

    Returns ``None`` when every mask is ``None``. Shapes broadcast against each other.
    """
    present = [m for m in masks if m is not None]
    if not present:
        return None
    combined = present[0].astype(bool)
    for mask in present[1:]:
        combined = jnp.logical_and(combined, mask.astype(bool))
    return combined
