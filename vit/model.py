"""The Vision Transformer (Dosovitskiy et al., 2021): an image cut into patches, the patches
treated as a sequence and encoded by the Transformer encoder of ``transformer.stack``.

Parameter names follow google-research/vision_transformer's checkpoints (``embedding``,
``cls``, ``Transformer/posembed_input``, ``Transformer/encoderblock_{i}``, ``pre_logits``,
``head``), so ``vit.checkpoint`` maps them one to one.
"""

from __future__ import annotations

import operator
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from transformer.layers import check_block_fields
from transformer.stack import Encoder, check_stack_fields

Array = jnp.ndarray
Dtype = Any

CLASSIFIERS = ("token", "gap")


def to_pair(value: int | tuple[int, int], field: str = "size") -> tuple[int, int]:
    """``16`` -> ``(16, 16)``; a (height, width) pair is kept; anything else names ``field``."""
    try:
        if not hasattr(value, "__len__"):
            return operator.index(value), operator.index(value)
        if len(value) == 2:
            return operator.index(value[0]), operator.index(value[1])
    except TypeError:
        pass
    raise ValueError(f"{field}={value!r} must be an int or a (height, width) pair of ints")


class PatchEmbedding(nn.Module):
    """Cut ``[batch, height, width, channels]`` images into non-overlapping patches and
    project each to ``features``: ``[batch, grid_h, grid_w, features]``.

    The same function and parameters as a ``nn.Conv`` with kernel = stride = the patch size
    (``kernel [patch_h, patch_w, channels, features]``, ``bias [features]``, as in the official
    checkpoints), computed as one matrix multiply over the flattened patches: on XLA:CPU that
    multiply, and its weight gradient, run faster than the strided convolution and its
    dilated-kernel gradient, with the same outputs.
    """

    features: int
    patch_size: tuple[int, int]
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> Array:
        batch, height, width, channels = images.shape
        ph, pw = self.patch_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (ph, pw, channels, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        images, kernel, bias = nn.dtypes.promote_dtype(images, kernel, bias, dtype=self.dtype)
        grid_h, grid_w = height // ph, width // pw
        patches = images.reshape(batch, grid_h, ph, grid_w, pw, channels)
        patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid_h, grid_w, -1)
        return patches @ kernel.reshape(-1, self.features) + bias


class VisionTransformer(nn.Module):
    """ViT classifier over NHWC images.

    Attributes:
      num_classes: output classes (``>= 1``).
      image_size: input resolution (int or (height, width)); sizes the position table.
      patch_size: patch side (int or (height, width)); must divide ``image_size``.
      hidden_size: token width; must divide by ``num_heads``.
      num_layers: encoder blocks.
      num_heads: attention heads.
      mlp_dim: MLP hidden width.
      num_channels: input channels (3 for RGB).
      classifier: ``"token"`` (class token) or ``"gap"`` (global average pool of the tokens).
      representation_size: width of the optional ``pre_logits`` Dense+tanh layer (None: none).
      distillation_token: add DeiT's distillation token and its own head ``head_dist``.
      dropout_rate / attention_dropout_rate: dropout inside the encoder (``train=True``).
      drop_path_rate: stochastic depth in training (DeiT/timm's ``drop_path_rate``): the last
        block drops each residual branch per example with this probability, the first with
        none, linearly in between (``transformer.stack.Encoder``).
      head_bias_init: initial head bias (the head kernel starts at zero, as in the official code).
      dtype / param_dtype: computation / parameter dtypes.
      remat_policy / scan_layers / attention_implementation: see ``transformer.stack.Encoder``.
      skip_unread_tokens: with ``classifier="token"``, the last block computes only the
        class (and distillation) token, the only ones the heads read: the other tokens'
        queries, attention outputs and MLP are skipped (7% of ViT-Ti/16's training FLOPs;
        ``EncoderBlock``'s ``output_tokens``). Same parameters and logits up to float32
        rounding. Off while the ``"intermediates"`` collection is mutable, so that feature
        and attention distillation see every token; ``False`` computes every token, as the
        official code does.

    ``apply({"params": p}, images [batch, height, width, channels], train=False)`` returns
    logits ``[batch, num_classes]`` (float32). With ``distillation_token`` it returns, as DeiT
    does, the pair ``(class_logits, distillation_logits)`` when ``train=True`` and their mean
    otherwise. With the ``"intermediates"`` collection mutable, every block's hidden state and
    attention weights are sown, and so are ``pre_logits`` ``[batch, features]``.
    """

    num_classes: int
    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_channels: int = 3
    classifier: str = "token"
    representation_size: int | None = None
    distillation_token: bool = False
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    head_bias_init: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    remat_policy: str = "none"
    scan_layers: bool = False
    attention_implementation: str = "xla"
    skip_unread_tokens: bool = True

    def __post_init__(self) -> None:
        for field in ("num_classes", "hidden_size", "num_channels"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}={getattr(self, field)} must be >= 1")
        if self.hidden_size % max(self.num_heads, 1):
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        image = to_pair(self.image_size, "image_size")
        patch = to_pair(self.patch_size, "patch_size")
        if min(image) < 1 or min(patch) < 1 or image[0] % patch[0] or image[1] % patch[1]:
            raise ValueError(
                f"image_size={self.image_size} must be positive and divisible by "
                f"patch_size={self.patch_size}"
            )
        if self.classifier not in CLASSIFIERS:
            raise ValueError(
                f"classifier={self.classifier!r} is not supported; expected one of {CLASSIFIERS}"
            )
        if self.distillation_token and self.classifier != "token":
            raise ValueError("distillation_token=True needs classifier='token'")
        check_block_fields(
            num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm_placement="pre",
            activation="gelu", dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            attention_implementation=self.attention_implementation,
        )
        check_stack_fields(self.num_layers, self.remat_policy,
                           drop_path_rate=self.drop_path_rate)
        if self.representation_size is not None and self.representation_size < 1:
            raise ValueError(f"representation_size={self.representation_size} must be >= 1 "
                             "or None")
        super().__post_init__()

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patches along height and width."""
        (height, width), (ph, pw) = to_pair(self.image_size), to_pair(self.patch_size)
        return height // ph, width // pw

    @property
    def num_prefix_tokens(self) -> int:
        """Class and distillation tokens before the patch tokens."""
        return (self.classifier == "token") + bool(self.distillation_token)

    def _check_images(self, images: Array) -> None:
        expected = (*to_pair(self.image_size), self.num_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must be [batch, height, width, channels] = [batch, {expected[0]}, "
                f"{expected[1]}, {expected[2]}] (image_size={self.image_size}); got shape "
                f"{tuple(images.shape)}"
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(
                f"images must be floating point (normalised pixels); got dtype {images.dtype}"
            )

    @nn.compact
    def __call__(self, images: Array, *, train: bool = False) -> Array | tuple[Array, Array]:
        self._check_images(images)
        x = PatchEmbedding(
            self.hidden_size,
            patch_size=to_pair(self.patch_size),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embedding",
        )(images)
        batch, grid_h, grid_w, features = x.shape
        x = x.reshape(batch, grid_h * grid_w, features)
        prefix = []
        if self.classifier == "token":
            prefix.append(self.param("cls", nn.initializers.zeros, (1, 1, features),
                                     self.param_dtype))
        if self.distillation_token:
            prefix.append(self.param("dist_token", nn.initializers.normal(stddev=0.02),
                                     (1, 1, features), self.param_dtype))
        if prefix:
            tokens = [jnp.tile(t, (batch, 1, 1)).astype(x.dtype) for t in prefix]
            x = jnp.concatenate([*tokens, x], axis=1)

        x = Encoder(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            max_length=self.num_prefix_tokens + grid_h * grid_w,
            position_embedding="learned",
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            norm_placement="pre",
            activation="gelu",
            layer_norm_epsilon=1e-6,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_implementation=self.attention_implementation,
            remat_policy=self.remat_policy,
            scan_layers=self.scan_layers,
            drop_path_rate=self.drop_path_rate,
            name="Transformer",
        )(x, train=train, output_tokens=self._tokens_read_by_heads())

        features_out = x[:, 0] if self.classifier == "token" else jnp.mean(x, axis=1)
        features_out = self._pre_logits(features_out)
        logits = self._head("head", features_out)
        if not self.distillation_token:
            return logits
        distill_logits = self._head("head_dist", self._pre_logits(x[:, 1], name="pre_logits_dist"))
        if train:
            return logits, distill_logits
        return (logits + distill_logits) / 2

    def _tokens_read_by_heads(self) -> int | None:
        """How many leading tokens of the encoder's output the last block computes (see
        ``skip_unread_tokens``); None: every token."""
        if (not self.skip_unread_tokens or self.classifier != "token"
                or self.is_mutable_collection("intermediates")):
            return None
        return self.num_prefix_tokens

    def _pre_logits(self, x: Array, name: str = "pre_logits") -> Array:
        if self.representation_size is not None:
            x = nn.Dense(self.representation_size, dtype=self.dtype,
                         param_dtype=self.param_dtype, name=name)(x)
            x = nn.tanh(x)
        self.sow("intermediates", name, x)
        return x

    def _head(self, name: str, x: Array) -> Array:
        logits = nn.Dense(
            self.num_classes,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.head_bias_init),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )(x)
        return logits.astype(jnp.float32)
