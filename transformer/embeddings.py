"""Position encodings added to token or patch embeddings."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
Dtype = Any

POSITION_EMBEDDINGS = ("learned", "sinusoidal", "none")


def sinusoidal_table(max_length: int, features: int, max_scale: float = 10_000.0) -> np.ndarray:
    """The fixed encodings of "Attention Is All You Need", section 3.5.

    PE[pos, 2i] = sin(pos / max_scale^(2i/d)), PE[pos, 2i+1] = cos(pos / max_scale^(2i/d)).

    Returns:
      float32 ``[max_length, features]``.
    """
    positions = np.arange(max_length, dtype=np.float64)[:, None]
    rates = max_scale ** (-np.arange(0, features, 2, dtype=np.float64) / features)
    table = np.zeros((max_length, features), dtype=np.float64)
    table[:, 0::2] = np.sin(positions * rates)
    table[:, 1::2] = np.cos(positions * rates[: features // 2])
    return table.astype(np.float32)


class AddPositionEmbedding(nn.Module):
    """Adds learned or sinusoidal position encodings to ``[batch, length, features]`` inputs.

    The learned table is the parameter ``pos_embedding`` ``[1, max_length, features]`` (the
    official ViT layout). In ``decode`` mode inputs carry one position per call, and a
    ``cache_index`` in the ``"cache"`` collection says which.

    Attributes:
      max_length: positions in the table; longer inputs fail with ``ValueError``.
      kind: ``"learned"``, ``"sinusoidal"`` or ``"none"``.
      decode: autoregressive one-position-per-call mode.
      param_dtype: dtype of the learned table.
    """

    max_length: int
    kind: str = "learned"
    decode: bool = False
    param_dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:
        if self.kind not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding={self.kind!r} is not supported; expected one of "
                f"{POSITION_EMBEDDINGS}"
            )
        super().__post_init__()

    @nn.compact
    def __call__(self, inputs: Array, positions: Array | None = None) -> Array:
        """``inputs`` ``[batch, length, features]``; ``positions`` ``[batch, length]`` (packed
        sequences restart at 0 for each example) default to ``0 .. length - 1``."""
        if self.kind == "none":
            return inputs
        _, length, features = inputs.shape
        if self.kind == "learned":
            table = self.param(
                "pos_embedding",
                nn.initializers.normal(stddev=0.02),
                (1, self.max_length, features),
                self.param_dtype,
            )
        else:
            table = jnp.asarray(sinusoidal_table(self.max_length, features))[None]
        if self.decode:
            is_initialized = self.has_variable("cache", "cache_index")
            cache_index = self.variable(
                "cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32)
            )
            if is_initialized:
                index = cache_index.value
                cache_index.value = index + 1
                step = jnp.take(table, index[None], axis=1)
                return inputs + step.astype(inputs.dtype)
        if length > self.max_length:
            raise ValueError(
                f"sequence length {length} exceeds the position table's max_length="
                f"{self.max_length}"
            )
        if positions is not None:
            return inputs + jnp.take(table[0], positions, axis=0).astype(inputs.dtype)
        return inputs + table[:, :length].astype(inputs.dtype)
