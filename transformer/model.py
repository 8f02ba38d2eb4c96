"""The encoder–decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

Token ids use ``PAD_ID = 0`` for padding (masked on both sides) and ``EOS_ID = 1``. The decoder
reads the targets shifted right by one with ``PAD_ID`` as the start token, so training and
step-by-step decoding see the same inputs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from transformer.embeddings import POSITION_EMBEDDINGS
from transformer.layers import check_block_fields
from transformer.masks import (
    PAD_ID,
    combine_masks,
    make_causal_mask,
    make_padding_mask,
    make_segment_mask,
)
from transformer.stack import Decoder, Encoder, check_stack_fields
from transformer.token_ids import check_token_ids

Array = jnp.ndarray
Dtype = Any

EOS_ID = 1

# Published sizes: "Attention Is All You Need", Table 3 (base and big); tiny ones for tests.
TRANSFORMER_CONFIGS: dict[str, dict[str, int]] = {
    "base": dict(emb_dim=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6,
                 mlp_dim=2048),
    "big": dict(emb_dim=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6,
                mlp_dim=4096),
    "small": dict(emb_dim=256, num_heads=4, num_encoder_layers=3, num_decoder_layers=3,
                  mlp_dim=1024),
    "tiny": dict(emb_dim=64, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
                 mlp_dim=128),
    "micro": dict(emb_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                  mlp_dim=64),
}


def check_batch_shapes(inputs: Array, targets: Array) -> None:
    """Raise ``ValueError`` unless ``inputs`` ``[batch, source_length]`` and ``targets``
    ``[batch, target_length]`` are rank 2 with the same batch size.

    Static shapes only, so this also holds under ``jax.jit``. Without it, different batch
    sizes fail deep in the attention masks with an unnamed broadcasting error, or, when one of
    them is 1, broadcast silently (every target attends to the one source).
    """
    if inputs.ndim != 2 or targets.ndim != 2 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            "inputs and targets must be [batch, source_length] and [batch, target_length] "
            f"with the same batch size; got inputs {tuple(inputs.shape)} and targets "
            f"{tuple(targets.shape)}")


def shift_right(tokens: Array, start_id: int = PAD_ID) -> Array:
    """``[batch, length]`` -> the same shifted right by one position, ``start_id`` first."""
    return jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=start_id)[:, :-1]


class Transformer(nn.Module):
    """Encoder–decoder Transformer for sequence-to-sequence tasks.

    Attributes:
      vocab_size: source vocabulary size.
      output_vocab_size: target vocabulary size (default: ``vocab_size``).
      share_embeddings: one embedding table for source and target (needs equal vocabularies).
      logits_via_embedding: output projection tied to the target embedding (paper, §3.4).
      emb_dim: model width d_model.
      num_heads: attention heads; ``emb_dim`` must divide by it.
      num_encoder_layers / num_decoder_layers: stack depths.
      mlp_dim: feed-forward width d_ff.
      max_length: longest source or target sequence.
      position_embedding: ``"sinusoidal"`` (paper) or ``"learned"``.
      norm_placement: ``"post"`` (paper) or ``"pre"`` (more stable for deep models).
      activation: ``"relu"`` (paper), ``"gelu"`` or ``"gelu_exact"``.
      dropout_rate / attention_dropout_rate: P_drop of the paper (0.1 for base).
      dtype / param_dtype: computation / parameter dtypes.
      decoding: autoregressive mode: ``decode`` takes one target position per call, with
        key/value caches in the ``"cache"`` collection (initialise with full-length targets).
      remat_policy / scan_layers / attention_implementation: see ``transformer.stack.Encoder``.
    """

    vocab_size: int
    output_vocab_size: int | None = None
    share_embeddings: bool = False
    logits_via_embedding: bool = False
    emb_dim: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    mlp_dim: int = 2048
    max_length: int = 256
    position_embedding: str = "sinusoidal"
    norm_placement: str = "post"
    activation: str = "relu"
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    layer_norm_epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    decoding: bool = False
    remat_policy: str = "none"
    scan_layers: bool = False
    attention_implementation: str = "xla"

    def __post_init__(self) -> None:
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size={self.vocab_size} must be >= 2 (PAD and EOS)")
        if self.output_vocab_size is not None and self.output_vocab_size < 2:
            raise ValueError(
                f"output_vocab_size={self.output_vocab_size} must be >= 2 (PAD and EOS)")
        check_block_fields(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm_placement=self.norm_placement,
            activation=self.activation, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            attention_implementation=self.attention_implementation,
        )
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding={self.position_embedding!r} is not supported; "
                             f"expected one of {POSITION_EMBEDDINGS}")
        for field in ("num_encoder_layers", "num_decoder_layers"):
            check_stack_fields(getattr(self, field), self.remat_policy, layers_field=field)
        if self.emb_dim % self.num_heads:
            raise ValueError(
                f"emb_dim={self.emb_dim} (hidden size) must be divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.share_embeddings and self.target_vocab_size != self.vocab_size:
            raise ValueError(
                "share_embeddings=True needs output_vocab_size == vocab_size; got "
                f"{self.output_vocab_size} and {self.vocab_size}"
            )
        if self.max_length < 1:
            raise ValueError(f"max_length={self.max_length} must be >= 1")
        super().__post_init__()

    @property
    def target_vocab_size(self) -> int:
        return self.output_vocab_size or self.vocab_size

    @property
    def target_vocab_field(self) -> str:
        """The field that sets ``target_vocab_size``, for error messages."""
        return "output_vocab_size" if self.output_vocab_size else "vocab_size"

    def setup(self) -> None:
        embed_init = nn.initializers.normal(stddev=self.emb_dim**-0.5)
        self.source_embedding = nn.Embed(
            self.vocab_size, self.emb_dim, embedding_init=embed_init,
            param_dtype=self.param_dtype, name="source_embedding",
        )
        if self.share_embeddings:
            self.target_embedding = self.source_embedding
        else:
            self.target_embedding = nn.Embed(
                self.target_vocab_size, self.emb_dim, embedding_init=embed_init,
                param_dtype=self.param_dtype, name="target_embedding",
            )
        stack = dict(
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            max_length=self.max_length,
            position_embedding=self.position_embedding,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            norm_placement=self.norm_placement,
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_implementation=self.attention_implementation,
            remat_policy=self.remat_policy,
            scan_layers=self.scan_layers,
        )
        self.encoder = Encoder(num_layers=self.num_encoder_layers, name="encoder", **stack)
        self.decoder = Decoder(
            num_layers=self.num_decoder_layers, decode=self.decoding, name="decoder", **stack
        )
        if not self.logits_via_embedding:
            self.logits_dense = nn.Dense(
                self.target_vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
                name="logits_dense",
            )

    def _embed(self, table: nn.Embed, tokens: Array) -> Array:
        """Token embeddings ``[batch, length, emb_dim]`` in the table's dtype (float32), scaled
        by sqrt(d_model) as in §3.4 of the paper. The stack adds the position encodings
        before it casts to ``dtype``, as flax's wmt example does: one rounding to bfloat16 of
        the sum, not one of each term."""
        return table(tokens) * jnp.sqrt(jnp.asarray(self.emb_dim, table.param_dtype))

    def encode(self, inputs: Array, *, train: bool = False,
               inputs_segmentation: Array | None = None,
               inputs_positions: Array | None = None) -> Array:
        """Source ids ``[batch, source_length]`` (0 = padding) -> ``[batch, source_length,
        emb_dim]``.

        For packed rows (several examples per row), ``inputs_segmentation`` ``[batch,
        source_length]`` numbers the examples and ``inputs_positions`` restarts at 0 for each:
        attention stays within an example.
        """
        check_token_ids(inputs, self.vocab_size, "inputs")
        mask = make_padding_mask(inputs)
        if inputs_segmentation is not None:
            mask = combine_masks(mask, make_segment_mask(inputs_segmentation,
                                                         inputs_segmentation))
        return self.encoder(self._embed(self.source_embedding, inputs), mask, train=train,
                            positions=inputs_positions)

    def decode(
        self, encoded: Array, inputs: Array, targets: Array, *, train: bool = False,
        inputs_segmentation: Array | None = None, targets_segmentation: Array | None = None,
        targets_positions: Array | None = None,
    ) -> Array:
        """Next-token logits ``[batch, target_length, target_vocab_size]`` (float32).

        Args:
          encoded: encoder output ``[batch, source_length, emb_dim]``.
          inputs: source ids ``[batch, source_length]``, for the cross-attention padding mask.
          targets: in training, the target ids ``[batch, target_length]`` (shifted right here);
            in ``decoding`` mode, the previous token ``[batch, 1]`` (``PAD_ID`` at the first step).
          inputs_segmentation / targets_segmentation / targets_positions: packed rows (see
            ``encode``); each packed example's decoder input starts with ``PAD_ID``.
        """
        check_batch_shapes(inputs, targets)
        check_token_ids(targets, self.target_vocab_size, "targets", self.target_vocab_field)
        if self.decoding:
            decoder_inputs = targets
            self_mask = None  # the cache masks positions not yet written
            cross_mask = make_padding_mask(jnp.ones_like(targets), inputs)
        else:
            decoder_inputs = shift_right(targets)
            self_mask = combine_masks(
                make_padding_mask(targets), make_causal_mask(targets.shape[1])
            )
            cross_mask = make_padding_mask(targets, inputs)
            if (inputs_segmentation is None) != (targets_segmentation is None):
                # One without the other would mask half of the packing: cross-attention
                # would reach the other examples of the row.
                raise ValueError(
                    "packed rows need both inputs_segmentation and targets_segmentation; got "
                    f"only {'inputs' if targets_segmentation is None else 'targets'}"
                    "_segmentation")
            if targets_segmentation is not None:
                # The first token of every packed example starts from PAD, not from the
                # previous example's last token.
                same = targets_segmentation == shift_right(targets_segmentation)
                decoder_inputs = decoder_inputs * same.astype(decoder_inputs.dtype)
                self_mask = combine_masks(self_mask, make_segment_mask(
                    targets_segmentation, targets_segmentation))
                cross_mask = combine_masks(cross_mask, make_segment_mask(
                    targets_segmentation, inputs_segmentation))
        x = self.decoder(
            self._embed(self.target_embedding, decoder_inputs),
            encoded,
            self_mask,
            cross_mask,
            train=train,
            positions=None if self.decoding else targets_positions,
        )
        if self.logits_via_embedding:
            logits = self.target_embedding.attend(x.astype(jnp.float32))
        else:
            logits = self.logits_dense(x)
        return logits.astype(jnp.float32)

    def __call__(self, inputs: Array, targets: Array, *, train: bool = False,
                 inputs_segmentation: Array | None = None,
                 targets_segmentation: Array | None = None,
                 inputs_positions: Array | None = None,
                 targets_positions: Array | None = None) -> Array:
        """Teacher-forced logits ``[batch, target_length, target_vocab_size]``; the optional
        arguments describe packed rows (see ``encode``)."""
        # Before encoding, so that 1-D inputs fail here rather than in the padding mask.
        check_batch_shapes(inputs, targets)
        encoded = self.encode(inputs, train=train, inputs_segmentation=inputs_segmentation,
                              inputs_positions=inputs_positions)
        return self.decode(encoded, inputs, targets, train=train,
                           inputs_segmentation=inputs_segmentation,
                           targets_segmentation=targets_segmentation,
                           targets_positions=targets_positions)


def create_transformer(name: str, vocab_size: int, **overrides: Any) -> Transformer:
    """A ``Transformer`` of a named size (``TRANSFORMER_CONFIGS``) with field overrides."""
    if name not in TRANSFORMER_CONFIGS:
        raise ValueError(
            f"unknown Transformer config {name!r}; known: {sorted(TRANSFORMER_CONFIGS)}"
        )
    return Transformer(vocab_size=vocab_size, **{**TRANSFORMER_CONFIGS[name], **overrides})
