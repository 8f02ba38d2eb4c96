"""Scaled dot-product attention and the multi-head attention layer.

Arrays are laid out ``[batch, length, heads, head_dim]`` at the interface, the layout that
``jax.nn.dot_product_attention`` and cuDNN's fused kernel take without transposes (the
XLA path turns them heads-first inside, see ``_softmax_attention``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from transformer.masks import combine_masks

Array = jnp.ndarray
Dtype = Any

ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn")
# The custom-call target of cuDNN's fused attention in XLA's compiled GPU programs (forward
# "...fmhaSoftmax", backward "...fmhaSoftmaxBackward", and variants): how a compiled program
# shows that ``implementation="cudnn"`` reached the kernel.
CUDNN_ATTENTION_TARGET = "__cudnn$fmha"


def cudnn_attention_calls(compiled_hlo_text: str) -> int:
    """How many calls of cuDNN's fused attention a compiled program's HLO text makes (0 on
    CPU, or where ``implementation="cudnn"`` fell back to XLA's attention)."""
    return compiled_hlo_text.count(f'custom_call_target="{CUDNN_ATTENTION_TARGET}')


def check_implementation(implementation: str) -> None:
    """Raise ``ValueError`` unless ``implementation`` is one of ``ATTENTION_IMPLEMENTATIONS``."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"attention_implementation={implementation!r} is not supported; "
            f"expected one of {ATTENTION_IMPLEMENTATIONS}"
        )


def _fused_kernel_supports(query: Array) -> bool:
    """Whether cuDNN's flash-attention kernel can run on these inputs: half precision and
    ``head_dim % 8 == 0`` on a GPU."""
    return (
        query.dtype in (jnp.bfloat16, jnp.float16)
        and query.shape[-1] % 8 == 0
        and jax.default_backend() == "gpu"
    )


def _pad_length(x: Array, axis: int, extra: int) -> Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _cudnn_attention(query: Array, key: Array, value: Array, bias: Array | None,
                     mask: Array | None) -> Array:
    """cuDNN's fused kernel through ``jax.nn.dot_product_attention``; same arguments and
    result as ``dot_product_attention`` (``[batch, length, heads, head_dim]``).

    Odd sequence lengths are padded by one position: JAX (0.11.2) sends every differentiated
    call down cuDNN's bias path, which takes even lengths only ("Unsupported sequence length Q
    197, KV 197" under ``jax.grad``, seen on an H200 on 2026-11-29), and a ViT has 197 tokens.
    The extra key is hidden (by the kernel's padding mask, ``key_value_seq_lengths``, or a
    False column of ``mask``) and the extra query row is dropped, so the result is unchanged.
    """
    batch, q_length, _, _ = query.shape
    kv_length = key.shape[1]
    pad_q, pad_kv = q_length % 2, kv_length % 2
    query = _pad_length(query, 1, pad_q)
    key, value = _pad_length(key, 1, pad_kv), _pad_length(value, 1, pad_kv)
    full = lambda x: None if x is None else _pad_length(_pad_length(  # noqa: E731
        jnp.broadcast_to(x, (batch, x.shape[1], q_length, kv_length)), 2, pad_q), 3, pad_kv)
    lengths = {}
    if (pad_q or pad_kv) and mask is None:
        lengths = {"query_seq_lengths": jnp.full((batch,), q_length, jnp.int32),
                   "key_value_seq_lengths": jnp.full((batch,), kv_length, jnp.int32)}
    out = jax.nn.dot_product_attention(
        query, key, value, bias=full(None if bias is None else bias.astype(query.dtype)),
        mask=full(mask), implementation="cudnn", **lengths)[:, :q_length]
    if mask is not None:
        # A row with no key gets a uniform average from the kernel (JAX's mask is a large
        # negative bias); this module's convention is zeros.
        out = jnp.where(_row_has_any_key(mask), out, jnp.zeros((), out.dtype))
    return out


def _row_has_any_key(mask: Array) -> Array:
    """``[batch|1, heads|1, q, k]`` mask -> ``[batch|1, q, heads|1, 1]``: does the row attend
    anywhere."""
    return jnp.any(mask, axis=-1).transpose(0, 2, 1)[..., None]


def attention_weights(
    query: Array,
    key: Array,
    *,
    bias: Array | None = None,
    mask: Array | None = None,
) -> Array:
    """softmax(QKᵀ/√d_k + bias) over keys, computed in float32.

    Args:
      query: ``[batch, q_length, heads, head_dim]``.
      key: ``[batch, kv_length, heads, head_dim]``.
      bias: broadcastable to ``[batch, heads, q_length, kv_length]``, added to the logits.
      mask: bool broadcastable to ``[batch, heads, q_length, kv_length]``; True = may attend.

    Returns:
      float32 ``[batch, heads, q_length, kv_length]``; rows with no key to attend are 0.
    """
    head_dim = query.shape[-1]
    logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    logits = logits / jnp.sqrt(jnp.float32(head_dim))
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        # A fully masked row would otherwise be uniform over the masked keys.
        weights = jnp.where(mask, weights, 0.0)
    return weights


def _heads_first(x: Array) -> Array:
    """``[batch, length, heads, head_dim]`` <-> ``[batch, heads, length, head_dim]``."""
    return x.transpose(0, 2, 1, 3)


def _masked_softmax(logits: Array, mask: Array | None) -> Array:
    """float32 softmax over the last axis; masked entries (and fully masked rows) are 0."""
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    return weights if mask is None else jnp.where(mask, weights, 0.0)


def _attention_forward(query, key, value, mask):
    logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)
    weights = _masked_softmax(logits, mask)
    out = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(value.dtype), value)
    return out, (query, key, value, weights)


def _attention_backward(residuals, d_out):
    query, key, value, weights = residuals
    d_weights = jnp.einsum("bhqd,bhkd->bhqk", d_out, value, preferred_element_type=jnp.float32)
    d_value = jnp.einsum("bhqk,bhqd->bhkd", weights.astype(d_out.dtype), d_out)
    # Softmax backward; masked entries have weight 0, so their logit gradient is 0 too.
    d_logits = weights * (d_weights - jnp.sum(d_weights * weights, axis=-1, keepdims=True))
    d_logits = d_logits.astype(query.dtype)
    d_query = jnp.einsum("bhqk,bhkd->bhqd", d_logits, key)
    d_key = jnp.einsum("bhqk,bhqd->bhkd", d_logits, query)
    return d_query, d_key, d_value, None


@jax.custom_vjp
def _softmax_attention(query: Array, key: Array, value: Array, mask: Array | None) -> Array:
    """softmax(Q·Kᵀ)·V on ``[batch, heads, length, head_dim]`` arrays (Q already scaled).

    Written out, with its gradient by hand, because XLA:CPU runs it faster than
    ``jax.nn.dot_product_attention``'s ``"xla"`` path: the heads-first layout keeps every
    batched matmul's batch dimensions leading, and the hand-written backward reuses the
    saved softmax instead of the chain of exp/divide/reduce gradients that autodiff emits
    (ViT-Ti/16 training step, batch 32, 2-core CPU: see docs/performance.md).
    """
    return _attention_forward(query, key, value, mask)[0]


_softmax_attention.defvjp(_attention_forward, _attention_backward)


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    *,
    bias: Array | None = None,
    mask: Array | None = None,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    deterministic: bool = True,
    dtype: Dtype | None = None,
    implementation: str = "xla",
    return_weights: bool = False,
) -> Array | tuple[Array, Array]:
    """softmax(QKᵀ/√d_k)·V with optional bias, boolean mask and attention dropout.

    Three paths compute the same function, all with the softmax in float32:

    - ``implementation="cudnn"`` where cuDNN's fused flash-attention kernel applies (a GPU,
      bf16/fp16, ``head_dim % 8 == 0``), without dropout or ``return_weights``:
      ``jax.nn.dot_product_attention``.
    - otherwise, without dropout, bias or ``return_weights`` (ViT, BERT, the seq2seq model):
      a heads-first XLA path with a hand-written gradient (``_softmax_attention``), the
      fastest of the forms measured on XLA:CPU.
    - otherwise: explicit weights (``attention_weights``), with dropout on them.

    Args:
      query: ``[batch, q_length, heads, head_dim]``.
      key: ``[batch, kv_length, heads, head_dim]``.
      value: ``[batch, kv_length, heads, head_dim]``.
      bias: broadcastable to ``[batch, heads, q_length, kv_length]``.
      mask: bool broadcastable to ``[batch, heads, q_length, kv_length]``; True = may attend.
        A query row with no key to attend outputs zeros.
      dropout_rate: dropout on the attention weights (only when not ``deterministic``).
      dropout_rng: PRNG key for that dropout.
      deterministic: disables dropout.
      dtype: computation dtype; defaults to the promoted dtype of the inputs.
      implementation: ``"xla"`` or ``"cudnn"``.
      return_weights: also return the float32 attention weights ``[batch, heads, q, kv]``.

    Returns:
      ``[batch, q_length, heads, head_dim]`` (and the weights when ``return_weights``).
    """
    check_implementation(implementation)
    if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
        raise ValueError(
            "query, key and value must be [batch, length, heads, head_dim]; got shapes "
            f"{query.shape}, {key.shape}, {value.shape}"
        )
    dtype = dtype or jnp.result_type(query.dtype, key.dtype, value.dtype)
    query, key, value = (x.astype(dtype) for x in (query, key, value))
    # Leading axes are added here so that every path (cuDNN's reads the heads axis) sees
    # [batch|1, heads|1, q, kv].
    if mask is not None:
        mask = jnp.asarray(mask, dtype=bool)
        while mask.ndim < 4:
            mask = mask[None]
    if bias is not None:
        bias = jnp.asarray(bias)
        while bias.ndim < 4:
            bias = bias[None]
    use_dropout = dropout_rate > 0.0 and not deterministic

    if not use_dropout and not return_weights:
        if implementation == "cudnn" and _fused_kernel_supports(query):
            return _cudnn_attention(query, key, value, bias, mask)
        if bias is None:
            scale = jnp.asarray(1.0 / query.shape[-1] ** 0.5, dtype)
            out = _softmax_attention(_heads_first(query) * scale, _heads_first(key),
                                     _heads_first(value), mask)
            return _heads_first(out)

    weights = attention_weights(query, key, bias=bias, mask=mask)
    if use_dropout:
        if dropout_rng is None:
            raise ValueError("dropout_rng is required when dropout_rate > 0 and not deterministic")
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
        weights_used = jnp.where(keep, weights / (1.0 - dropout_rate), 0.0)
    else:
        weights_used = weights
    out = jnp.einsum("bhqk,bkhd->bqhd", weights_used.astype(dtype), value)
    return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Multi-head dot-product attention (self- or cross-attention) with a decoding cache.

    Parameter names follow the official ViT checkpoints: ``query``/``key``/``value`` kernels
    ``[features, heads, head_dim]`` and ``out`` kernel ``[heads, head_dim, out_features]``.

    Attributes:
      num_heads: number of attention heads; ``qkv_features`` must divide by it.
      qkv_features: total width of queries/keys/values (default: input width).
      out_features: output width (default: input width).
      dropout_rate: dropout on the attention weights.
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay ``param_dtype``.
      param_dtype: parameter dtype.
      use_bias: biases on the projections.
      kernel_init: initialiser of the projection kernels.
      decode: keep a key/value cache in the ``"cache"`` collection so that each call adds
        one position (autoregressive decoding). Initialise with the full-length input to size
        the cache.
      attention_implementation: ``"xla"`` or ``"cudnn"`` (see ``dot_product_attention``).

    When the ``"intermediates"`` collection is mutable, the attention weights
    ``[batch, heads, q_length, kv_length]`` are sown there as ``attention_weights``.
    """

    num_heads: int
    qkv_features: int | None = None
    out_features: int | None = None
    dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.xavier_uniform()
    decode: bool = False
    attention_implementation: str = "xla"

    def __post_init__(self) -> None:
        if self.num_heads < 1:
            raise ValueError(f"num_heads={self.num_heads} must be >= 1")
        if self.qkv_features is not None and self.qkv_features % self.num_heads:
            raise ValueError(
                f"qkv_features={self.qkv_features} must be divisible by num_heads={self.num_heads}"
            )
        check_implementation(self.attention_implementation)
        super().__post_init__()

    @nn.compact
    def __call__(
        self,
        inputs_q: Array,
        inputs_kv: Array | None = None,
        *,
        mask: Array | None = None,
        bias: Array | None = None,
        deterministic: bool = True,
    ) -> Array:
        """Attend from ``inputs_q`` ``[batch, q_length, features]`` to ``inputs_kv``
        ``[batch, kv_length, features]`` (``inputs_q`` itself when None).

        Returns ``[batch, q_length, out_features]``.
        """
        inputs_kv = inputs_q if inputs_kv is None else inputs_kv
        features = self.qkv_features or inputs_q.shape[-1]
        if features % self.num_heads:
            raise ValueError(
                f"hidden size {features} must be divisible by num_heads={self.num_heads}"
            )
        head_dim = features // self.num_heads
        dense = functools.partial(
            nn.DenseGeneral,
            features=(self.num_heads, head_dim),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
        )
        query = dense(name="query")(inputs_q)
        key = dense(name="key")(inputs_kv)
        value = dense(name="value")(inputs_kv)

        if self.decode:
            key, value, mask = self._update_cache(key, value, mask)

        dropout_rng = None
        if self.dropout_rate > 0.0 and not deterministic:
            dropout_rng = self.make_rng("dropout")
        want_weights = self.is_mutable_collection("intermediates")
        result = dot_product_attention(
            query,
            key,
            value,
            bias=bias,
            mask=mask,
            dropout_rate=self.dropout_rate,
            dropout_rng=dropout_rng,
            deterministic=deterministic,
            dtype=self.dtype,
            implementation=self.attention_implementation,
            return_weights=want_weights,
        )
        if want_weights:
            result, weights = result
            self.sow("intermediates", "attention_weights", weights)
        return nn.DenseGeneral(
            features=self.out_features or inputs_q.shape[-1],
            axis=(-2, -1),
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            name="out",
        )(result)

    def _update_cache(
        self, key: Array, value: Array, mask: Array | None
    ) -> tuple[Array, Array, Array | None]:
        """Write this step's key/value into the cache and mask the unwritten positions.

        On initialisation the cache is created with the full input length (``max_length``)
        and the inputs pass through unchanged. Afterwards each call carries one position:
        key/value ``[batch, 1, heads, head_dim]`` become ``[batch, max_length, heads, head_dim]``.
        """
        is_initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
        if not is_initialized:
            return key, value, mask
        batch, max_length, heads, head_dim = cached_key.value.shape
        if key.shape != (batch, 1, heads, head_dim):
            raise ValueError(
                f"decode mode takes one position per call: expected key shape "
                f"{(batch, 1, heads, head_dim)}, got {key.shape}"
            )
        index = cache_index.value
        start = (0, index, 0, 0)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
        cache_index.value = index + 1
        written = (jnp.arange(max_length) <= index)[None, None, None, :]
        return cached_key.value, cached_value.value, combine_masks(mask, written)
