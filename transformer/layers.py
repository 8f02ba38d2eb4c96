"""The Transformer's blocks: MLP, encoder block and decoder block.

Submodule names follow the official ViT checkpoints (``LayerNorm_0``,
``MultiHeadDotProductAttention_1``, ``LayerNorm_2``, ``MlpBlock_3`` with ``Dense_0``/``Dense_1``)
so that those checkpoints map onto the parameter tree one to one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.attention import MultiHeadAttention, check_implementation

Array = jnp.ndarray
Dtype = Any

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    # The official ViT code uses flax's default GELU, the tanh approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=True),
    # BERT and timm use the exact erf form.
    "gelu_exact": functools.partial(jax.nn.gelu, approximate=False),
    "relu": jax.nn.relu,
}
NORM_PLACEMENTS = ("pre", "post")


def drop_path(x: Array, rate: float | Array, rng: jax.Array) -> Array:
    """Stochastic depth (Huang et al., 2016; DeiT/timm's ``DropPath``): ``x`` ``[batch, ...]``
    zeroed for whole examples with probability ``rate``, the others scaled by
    ``1 / (1 - rate)``, so the expectation is ``x``.

    Written here rather than with ``nn.Dropout(broadcast_dims=...)``, which draws the same
    per-example mask, because a scanned stack gives each layer its own rate as a traced
    value, and ``nn.Dropout`` needs a Python float.
    """
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


def _is_zero(rate: float | Array | None) -> bool:
    """True for a rate known to be 0 when tracing (None or a Python 0); a traced rate is
    not, and is applied even where its value is 0 (``drop_path`` then returns ``x``)."""
    return rate is None or (isinstance(rate, (int, float)) and rate == 0.0)


def check_block_fields(
    *, num_heads: int, mlp_dim: int, norm_placement: str, activation: str, dropout_rate: float,
    attention_dropout_rate: float, attention_implementation: str,
) -> None:
    """Raise ``ValueError`` naming the field when a block setting is invalid."""
    for name, value in (("num_heads", num_heads), ("mlp_dim", mlp_dim)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    check_implementation(attention_implementation)
    if norm_placement not in NORM_PLACEMENTS:
        raise ValueError(
            f"norm_placement={norm_placement!r} is not supported; expected one of {NORM_PLACEMENTS}"
        )
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation={activation!r} is not supported; expected one of {tuple(ACTIVATIONS)}"
        )
    for name, rate in (("dropout_rate", dropout_rate),
                       ("attention_dropout_rate", attention_dropout_rate)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{name}={rate} must be in [0, 1)")


class MlpBlock(nn.Module):
    """Position-wise feed-forward network: Dense → activation → dropout → Dense → dropout.

    Attributes:
      mlp_dim: hidden width.
      out_dim: output width (default: input width).
      activation: key of ``ACTIVATIONS``.
      dropout_rate: dropout after each Dense.
      dtype / param_dtype: computation / parameter dtypes.
    """

    mlp_dim: int
    out_dim: int | None = None
    activation: str = "gelu"
    dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.xavier_uniform()
    bias_init: Callable = nn.initializers.normal(stddev=1e-6)

    @nn.compact
    def __call__(self, inputs: Array, *, deterministic: bool = True) -> Array:
        """``[batch, length, features]`` -> ``[batch, length, out_dim]``."""
        dense = functools.partial(
            nn.Dense,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=self.bias_init,
        )
        x = dense(self.mlp_dim, name="Dense_0")(inputs)
        x = ACTIVATIONS[self.activation](x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
        x = dense(self.out_dim or inputs.shape[-1], name="Dense_1")(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class _BlockFields(nn.Module):
    """Fields shared by the encoder and decoder blocks (see ``EncoderBlock``)."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    norm_placement: str = "pre"
    activation: str = "gelu"
    layer_norm_epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    attention_implementation: str = "xla"

    def __post_init__(self) -> None:
        check_block_fields(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            norm_placement=self.norm_placement,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            attention_implementation=self.attention_implementation,
        )
        super().__post_init__()

    def layer_norm(self, name: str) -> nn.LayerNorm:
        return nn.LayerNorm(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def attention(self, name: str, decode: bool = False) -> MultiHeadAttention:
        return MultiHeadAttention(
            num_heads=self.num_heads,
            dropout_rate=self.attention_dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            decode=decode,
            attention_implementation=self.attention_implementation,
            name=name,
        )

    def mlp(self, name: str) -> MlpBlock:
        return MlpBlock(
            mlp_dim=self.mlp_dim,
            activation=self.activation,
            dropout_rate=self.dropout_rate,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def residual(
        self, x: Array, sublayer: Callable[[Array], Array], norm: nn.LayerNorm,
        deterministic: bool, keep: int | None = None, branch_deterministic: bool | None = None,
        drop_path_rate: float | Array | None = None,
    ) -> Array:
        """``x + dropout(sublayer(norm(x)))`` (pre-LN) or ``norm(x + dropout(sublayer(x)))``
        (post-LN). With ``keep``, ``sublayer`` returns only the first ``keep`` positions and
        only those are added to (``x[:, :keep]``). ``branch_deterministic`` (default
        ``deterministic``) switches the branch's dropout alone, for a sublayer that applies
        its own; in training, ``drop_path_rate`` drops the whole branch per example
        (``drop_path``)."""
        drop = nn.Dropout(self.dropout_rate)
        branch_deterministic = deterministic if branch_deterministic is None \
            else branch_deterministic

        def branch(y: Array) -> Array:
            y = drop(sublayer(y), deterministic=branch_deterministic)
            if deterministic or _is_zero(drop_path_rate):
                return y
            return drop_path(y, drop_path_rate, self.make_rng("dropout"))

        kept = x if keep is None else x[:, :keep]
        if self.norm_placement == "pre":
            return kept + branch(norm(x))
        return norm(kept + branch(x))


class EncoderBlock(_BlockFields):
    """Self-attention and MLP, each in a residual branch with LayerNorm.

    ``norm_placement="pre"`` normalises each branch's input (ViT);
    ``"post"`` normalises after the residual sum ("Attention Is All You Need", BERT).

    Attributes:
      num_heads: attention heads; the input width must divide by it.
      mlp_dim: MLP hidden width.
      dropout_rate: dropout on each branch output and inside the MLP.
      attention_dropout_rate: dropout on the attention weights.
      norm_placement: ``"pre"`` or ``"post"``.
      activation: MLP activation (``"gelu"``, ``"gelu_exact"``, ``"relu"``).
      layer_norm_epsilon: 1e-6 for ViT, 1e-12 for BERT.
      dtype / param_dtype: computation / parameter dtypes.
      attention_implementation: ``"xla"`` or ``"cudnn"``.

    ``drop_path_rate`` (a call argument, so that a scanned stack can give each layer its own)
    drops each residual branch per example in training (stochastic depth).

    The block's output ``[batch, length, features]`` (``[batch, n, features]`` with
    ``output_tokens=n``) is sown as ``hidden_state`` in ``"intermediates"`` when that
    collection is mutable.
    """

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, deterministic: bool = True,
                 output_tokens: int | None = None,
                 drop_path_rate: float | Array | None = None) -> Array:
        """``[batch, length, features]`` -> same shape; ``mask`` as in ``dot_product_attention``.

        With ``output_tokens=n`` only the first ``n`` positions are computed and returned
        (``[batch, n, features]``): their queries still attend to every position, but the
        other positions' queries, attention outputs, residuals and MLP, which nothing after
        the block would read, are skipped. Same parameters and the same values for those
        positions (up to float32 rounding); the last block of a class-token ViT needs only
        its first position.
        """
        attention = self.attention("MultiHeadDotProductAttention_1")
        query_mask = mask
        if output_tokens is not None and mask is not None and mask.shape[-2] != 1:
            query_mask = mask[..., :output_tokens, :]

        def attend(y: Array) -> Array:
            queries = y if output_tokens is None else y[:, :output_tokens]
            return attention(queries, y, mask=query_mask, deterministic=deterministic)

        x = self.residual(
            x, attend, self.layer_norm("LayerNorm_0"), deterministic, keep=output_tokens,
            drop_path_rate=drop_path_rate,
        )
        mlp = self.mlp("MlpBlock_3")
        # The MLP applies its own output dropout, so the branch adds none.
        x = self.residual(
            x, lambda y: mlp(y, deterministic=deterministic), self.layer_norm("LayerNorm_2"),
            deterministic, branch_deterministic=True, drop_path_rate=drop_path_rate,
        )
        self.sow("intermediates", "hidden_state", x)
        return x


class DecoderBlock(_BlockFields):
    """Causal self-attention, cross-attention to the encoder, then MLP; residual + LayerNorm.

    Attributes are those of ``EncoderBlock`` plus ``decode`` (key/value cache for
    step-by-step decoding).
    """

    decode: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoded: Array,
        self_mask: Array | None = None,
        cross_mask: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Decoder states ``[batch, target_length, features]`` attending to ``encoded``
        ``[batch, source_length, features]``; returns the decoder states' shape."""
        self_attention = self.attention("SelfAttention", decode=self.decode)
        x = self.residual(
            x,
            lambda y: self_attention(y, mask=self_mask, deterministic=deterministic),
            self.layer_norm("LayerNorm_0"),
            deterministic,
        )
        cross_attention = self.attention("CrossAttention")
        x = self.residual(
            x,
            lambda y: cross_attention(y, encoded, mask=cross_mask, deterministic=deterministic),
            self.layer_norm("LayerNorm_1"),
            deterministic,
        )
        mlp = self.mlp("MlpBlock")
        x = self.residual(
            x, lambda y: mlp(y, deterministic=deterministic), self.layer_norm("LayerNorm_2"),
            deterministic, branch_deterministic=True,
        )
        self.sow("intermediates", "hidden_state", x)
        return x
