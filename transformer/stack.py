"""Stacks of blocks: the Transformer encoder and decoder.

Both stacks support rematerialisation (``jax.checkpoint`` with a named policy) and
``nn.scan`` over layers, which compiles one block instead of ``num_layers`` copies. A scanned
stack stores its blocks' parameters stacked along a leading ``[num_layers]`` axis under one
name (``encoderblock`` / ``decoderblock``) instead of ``encoderblock_0 … encoderblock_{n-1}``;
``vit.checkpoint.stack_blocks`` and ``vit.checkpoint.unstack_scanned_blocks`` convert a ViT
encoder's parameters between the two layouts; the seq2seq model has no such converter, so its
parameters load only into a model with the same ``scan_layers``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.embeddings import AddPositionEmbedding
from transformer.layers import DecoderBlock, EncoderBlock

Array = jnp.ndarray
Dtype = Any

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def check_stack_fields(num_layers: int, remat_policy: str,
                       layers_field: str = "num_layers", drop_path_rate: float = 0.0) -> None:
    """Raise ``ValueError`` naming the field (``layers_field`` for the depth) when a stack
    setting is invalid."""
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
    if num_layers < 1:
        raise ValueError(f"{layers_field}={num_layers} must be >= 1")
    if remat_policy not in REMAT_POLICIES:
        raise ValueError(
            f"remat_policy={remat_policy!r} is not supported; expected one of "
            f"{tuple(REMAT_POLICIES)}"
        )


def _wrap_block(block_cls: type[nn.Module], remat_policy: str, static_argnums: tuple[int, ...]):
    if remat_policy == "none":
        return block_cls
    return nn.remat(block_cls, policy=REMAT_POLICIES[remat_policy], static_argnums=static_argnums)


class _ScanBody(nn.Module):
    """Adapts a block to ``nn.scan``'s ``(carry, x) -> (carry, y)`` signature; ``x`` is the
    layer's drop-path rate, passed after the block's other arguments (None: none)."""

    block_cls: Any
    block_kwargs: dict
    deterministic: bool  # a field, not an argument: scan would turn an argument into a tracer

    @nn.compact
    def __call__(self, carry: Array, rate: Array | None, *arrays) -> tuple[Array, None]:
        block = self.block_cls(**self.block_kwargs, name="block")
        extra = () if rate is None else (None, rate)  # output_tokens, drop_path_rate
        return block(carry, *arrays, self.deterministic, *extra), None


def _scan_stack(
    block_cls, num_layers: int, num_arrays: int, deterministic: bool, name: str,
    per_layer: bool = False, **block_kwargs
):
    """``nn.scan`` of ``block_cls`` over ``num_layers``; ``num_arrays`` inputs broadcast to
    all; with ``per_layer`` the first input is ``[num_layers]`` values, one per layer."""
    scanned = nn.scan(
        _ScanBody,
        variable_axes={"params": 0, "intermediates": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0 if per_layer else nn.broadcast,) + (nn.broadcast,) * num_arrays,
        length=num_layers,
    )
    return scanned(
        block_cls=block_cls, block_kwargs=block_kwargs, deterministic=deterministic, name=name
    )


class _StackFields(nn.Module):
    """Fields shared by ``Encoder`` and ``Decoder``; see ``Encoder``'s docstring."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    max_length: int = 512
    position_embedding: str = "learned"
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    norm_placement: str = "pre"
    activation: str = "gelu"
    layer_norm_epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    attention_implementation: str = "xla"
    remat_policy: str = "none"
    scan_layers: bool = False

    def __post_init__(self) -> None:
        # drop_path_rate is the encoder's field; the decoder has none.
        check_stack_fields(self.num_layers, self.remat_policy,
                           drop_path_rate=getattr(self, "drop_path_rate", 0.0))
        super().__post_init__()

    def block_kwargs(self) -> dict:
        return dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            norm_placement=self.norm_placement,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_implementation=self.attention_implementation,
        )

    def final_norm(self, x: Array, name: str) -> Array:
        # Pre-LN stacks end with a LayerNorm (ViT's ``encoder_norm``); post-LN blocks already
        # end normalised.
        if self.norm_placement != "pre":
            return x
        return nn.LayerNorm(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )(x)


class Encoder(_StackFields):
    """Position embedding, dropout, ``num_layers`` encoder blocks, final LayerNorm (pre-LN).

    This is the encoder of both the seq2seq Transformer and the ViT ("Transformer" in the
    official ViT checkpoints: ``posembed_input``, ``encoderblock_{i}``, ``encoder_norm``).

    Attributes:
      num_layers: number of blocks.
      num_heads, mlp_dim, dropout_rate, attention_dropout_rate, norm_placement, activation,
        layer_norm_epsilon, dtype, param_dtype, attention_implementation: see ``EncoderBlock``.
      max_length: size of the position table.
      position_embedding: ``"learned"``, ``"sinusoidal"`` or ``"none"``.
      remat_policy: ``"none"``, ``"full"``, ``"dots"`` or ``"dots_no_batch"``
        (``jax.checkpoint`` policy per block). On XLA:CPU it saves memory only together with
        ``scan_layers`` (``benchmarks/vit_memory.py``; GPU/TPU not measured here).
      scan_layers: ``nn.scan`` over the blocks (stacked parameters, faster compiles).
      drop_path_rate: stochastic depth in training: block ``i`` drops each of its residual
        branches per example with probability ``drop_path_rate * i / (num_layers - 1)``,
        rising linearly from 0 at the first block, as DeiT and timm do.
    """

    drop_path_rate: float = 0.0

    def layer_drop_path_rates(self) -> list[float]:
        """The blocks' rates, ``[num_layers]``: ``torch.linspace(0, rate, num_layers)``."""
        return [self.drop_path_rate * i / max(self.num_layers - 1, 1)
                for i in range(self.num_layers)]

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False,
                 positions: Array | None = None, output_tokens: int | None = None) -> Array:
        """Embedded inputs ``[batch, length, features]`` -> ``[batch, length, features]``;
        ``positions`` ``[batch, length]`` for packed sequences.

        ``output_tokens=n`` returns only the first ``n`` positions, ``[batch, n, features]``;
        without ``scan_layers`` the last block then computes only those (see
        ``EncoderBlock``), which a classifier reading its class token needs alone.
        """
        x = AddPositionEmbedding(
            max_length=self.max_length,
            kind=self.position_embedding,
            param_dtype=self.param_dtype,
            name="posembed_input",
        )(x, positions)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = x.astype(self.dtype or x.dtype)
        # ``mask``, ``deterministic``, ``output_tokens`` and ``drop_path_rate`` are
        # positional for remat's static_argnums (self is argument 0).
        rates = self.layer_drop_path_rates() if train and self.drop_path_rate else None
        if self.scan_layers:
            # Every scanned layer has one shape, so the last one cannot be cut short; the
            # rates are scanned over, so traced, and output_tokens (None) is static.
            block_cls = _wrap_block(EncoderBlock, self.remat_policy,
                                    static_argnums=(3,) if rates is None else (3, 4))
            x, _ = _scan_stack(
                block_cls, self.num_layers, 1, not train, "encoderblock",
                per_layer=rates is not None, **self.block_kwargs()
            )(x, None if rates is None else jnp.asarray(rates, jnp.float32), mask)
            x = x if output_tokens is None else x[:, :output_tokens]
        else:
            block_cls = _wrap_block(EncoderBlock, self.remat_policy, static_argnums=(3, 4, 5))
            for i in range(self.num_layers):
                last = i == self.num_layers - 1
                x = block_cls(**self.block_kwargs(), name=f"encoderblock_{i}")(
                    x, mask, not train, output_tokens if last else None,
                    None if rates is None else rates[i])
        return self.final_norm(x, "encoder_norm")


class Decoder(_StackFields):
    """``num_layers`` decoder blocks over embedded targets, attending to the encoder output.

    Attributes are ``Encoder``'s plus ``decode`` (one position per call, with caches).
    """

    decode: bool = False

    @nn.compact
    def __call__(
        self,
        x: Array,
        encoded: Array,
        self_mask: Array | None = None,
        cross_mask: Array | None = None,
        *,
        train: bool = False,
        positions: Array | None = None,
    ) -> Array:
        """Embedded targets ``[batch, target_length, features]`` -> same shape."""
        x = AddPositionEmbedding(
            max_length=self.max_length,
            kind=self.position_embedding,
            decode=self.decode,
            param_dtype=self.param_dtype,
            name="posembed_output",
        )(x, positions)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = x.astype(self.dtype or x.dtype)
        kwargs = dict(self.block_kwargs(), decode=self.decode)
        block_cls = _wrap_block(DecoderBlock, self.remat_policy, static_argnums=(5,))
        if self.scan_layers:
            x, _ = _scan_stack(
                block_cls, self.num_layers, 3, not train, "decoderblock", **kwargs
            )(x, None, encoded, self_mask, cross_mask)
        else:
            for i in range(self.num_layers):
                x = block_cls(**kwargs, name=f"decoderblock_{i}")(
                    x, encoded, self_mask, cross_mask, not train
                )
        return self.final_norm(x, "decoder_norm")
