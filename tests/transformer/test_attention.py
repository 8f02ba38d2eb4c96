"""dot_product_attention and MultiHeadAttention against a plain NumPy reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import (
    MultiHeadAttention,
    attention_weights,
    combine_masks,
    dot_product_attention,
    make_causal_mask,
    make_padding_mask,
)
from transformer import attention as attention_module

BATCH, Q_LEN, KV_LEN, HEADS, HEAD_DIM = 2, 5, 7, 3, 8


def numpy_attention(query, key, value, mask=None, bias=None):
    """softmax(QKᵀ/√d)V in float64, rows with nothing to attend -> 0."""
    query, key, value = (np.asarray(x, np.float64) for x in (query, key, value))
    logits = np.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(query.shape[-1])
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if mask is not None:
        mask = np.broadcast_to(np.asarray(mask), logits.shape)
        logits = np.where(mask, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(logits - row_max)
    total = weights.sum(-1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    return np.einsum("bhqk,bkhd->bqhd", weights, value)


@pytest.fixture
def qkv():
    rng = np.random.default_rng(0)
    shape_q = (BATCH, Q_LEN, HEADS, HEAD_DIM)
    shape_kv = (BATCH, KV_LEN, HEADS, HEAD_DIM)
    return (rng.normal(size=shape_q).astype(np.float32),
            rng.normal(size=shape_kv).astype(np.float32),
            rng.normal(size=shape_kv).astype(np.float32))


def _padding_mask():
    query_tokens = np.array([[3, 4, 5, 6, 0], [7, 8, 0, 0, 0]])
    key_tokens = np.array([[3, 4, 5, 6, 2, 0, 0], [7, 8, 9, 0, 0, 0, 0]])
    return make_padding_mask(jnp.asarray(query_tokens), jnp.asarray(key_tokens))


def _causal_mask():
    return make_causal_mask(KV_LEN)[:, :, :Q_LEN]


@pytest.mark.parametrize("mask_name", ["none", "padding", "causal", "combined"])
@pytest.mark.parametrize("return_weights", [False, True])
def test_attention_matches_numpy(qkv, mask_name, return_weights):
    mask = {
        "none": None,
        "padding": _padding_mask(),
        "causal": _causal_mask(),
        "combined": combine_masks(_padding_mask(), _causal_mask()),
    }[mask_name]
    out = dot_product_attention(*qkv, mask=mask, return_weights=return_weights)
    if return_weights:
        out, weights = out
        assert weights.shape == (BATCH, HEADS, Q_LEN, KV_LEN)
        assert weights.dtype == jnp.float32
    np.testing.assert_allclose(out, numpy_attention(*qkv, mask=mask), atol=2e-6, rtol=1e-5)


def test_bias_is_added_to_logits(qkv):
    bias = np.random.default_rng(1).normal(size=(1, HEADS, Q_LEN, KV_LEN)).astype(np.float32)
    out = dot_product_attention(*qkv, bias=jnp.asarray(bias))
    np.testing.assert_allclose(out, numpy_attention(*qkv, bias=bias), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("return_weights", [False, True])
def test_fully_masked_rows_are_zero_not_nan(qkv, return_weights):
    mask = np.ones((BATCH, 1, Q_LEN, KV_LEN), bool)
    mask[0, :, 2] = False  # query row 2 of example 0 sees nothing
    mask[1] = False  # example 1 sees nothing at all
    out = dot_product_attention(*qkv, mask=jnp.asarray(mask), return_weights=return_weights)
    out = out[0] if return_weights else out
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0, 2], 0.0)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(out, numpy_attention(*qkv, mask=mask), atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("mask_name", ["none", "padding", "fully_masked_rows"])
def test_hand_written_gradient_equals_autodiff_of_the_explicit_path(qkv, mask_name):
    """The fast path's custom VJP against jax.grad through softmax(QKᵀ/√d)V written out."""
    mask = {"none": None, "padding": _padding_mask(), "fully_masked_rows": None}[mask_name]
    if mask_name == "fully_masked_rows":
        mask = np.ones((BATCH, 1, Q_LEN, KV_LEN), bool)
        mask[0, :, 2] = False
        mask = jnp.asarray(mask)
    cotangent = np.random.default_rng(5).normal(size=(BATCH, Q_LEN, HEADS, HEAD_DIM))

    def explicit(q, k, v):
        weights = attention_weights(q, k, mask=mask)
        return jnp.einsum("bhqk,bkhd->bqhd", weights, v)

    def loss(attend):
        return lambda q, k, v: jnp.sum(attend(q, k, v) * cotangent)

    fast = jax.grad(loss(lambda q, k, v: dot_product_attention(q, k, v, mask=mask)),
                    argnums=(0, 1, 2))(*qkv)
    reference = jax.grad(loss(explicit), argnums=(0, 1, 2))(*qkv)
    for got, want in zip(fast, reference, strict=True):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # The gradient is not trivially zero: every input moves the loss.
    assert all(float(jnp.abs(g).max()) > 1e-2 for g in fast)


def test_bfloat16_inputs_softmax_in_float32(qkv):
    mask = combine_masks(_padding_mask(), _causal_mask())
    q, k, v = (jnp.asarray(x, jnp.bfloat16) for x in qkv)
    out = dot_product_attention(q, k, v, mask=mask)
    assert out.dtype == jnp.bfloat16
    # Reference from the bf16-rounded inputs; the error left is bf16 rounding of the output
    # and of the weights, well below what a bf16 softmax (3 significant digits) would give.
    reference = numpy_attention(*(np.asarray(x, np.float32) for x in (q, k, v)), mask=mask)
    np.testing.assert_allclose(np.asarray(out, np.float32), reference, atol=3e-2, rtol=2e-2)
    _, weights = dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert weights.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(weights).sum(-1)[0, :, :4], 1.0, rtol=1e-6)


def test_dropout_path_equals_exact_path_without_dropout(qkv):
    mask = _padding_mask()
    fused = dot_product_attention(*qkv, mask=mask)
    exact = dot_product_attention(*qkv, mask=mask, return_weights=True)[0]
    np.testing.assert_allclose(fused, exact, atol=1e-6)
    dropped = dot_product_attention(
        *qkv, mask=mask, dropout_rate=0.5, dropout_rng=jax.random.key(0), deterministic=False
    )
    assert not np.allclose(dropped, exact)
    assert np.all(np.isfinite(dropped))


def test_unknown_implementation_is_rejected(qkv):
    with pytest.raises(ValueError, match="implementation"):
        dot_product_attention(*qkv, implementation="flash")


def test_cudnn_request_falls_back_to_xla_where_kernel_cannot_run(qkv):
    # On CPU (and for float32) the fused kernel does not apply: same numbers as "xla".
    out = dot_product_attention(*qkv, implementation="cudnn")
    np.testing.assert_allclose(out, dot_product_attention(*qkv), atol=1e-6)


@pytest.mark.parametrize("mask_name", ["none", "padding"])
def test_cudnn_wrapper_pads_odd_lengths_without_changing_the_result(qkv, mask_name,
                                                                    monkeypatch):
    """The cuDNN path pads odd lengths (5 queries, 7 keys here) by one position for the kernel;
    run through JAX's XLA implementation of the same call (the kernel needs a GPU), the padded
    result equals the reference, rows with no key included."""
    xla_attention = jax.nn.dot_product_attention
    calls = []

    def on_xla(*args, implementation=None, **kwargs):
        calls.append((args[0].shape, implementation, sorted(kwargs)))
        return xla_attention(*args, implementation="xla", **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", on_xla)
    mask = {"none": None, "padding": _padding_mask()}[mask_name]
    out = attention_module._cudnn_attention(*qkv, None, mask)
    assert calls[0][0] == (BATCH, Q_LEN + 1, HEADS, HEAD_DIM) and calls[0][1] == "cudnn"
    assert out.shape == (BATCH, Q_LEN, HEADS, HEAD_DIM)
    np.testing.assert_allclose(out, numpy_attention(*qkv, mask=mask), atol=1e-5)


@pytest.mark.parametrize("bias_shape", [(BATCH, HEADS, Q_LEN, KV_LEN), (HEADS, Q_LEN, KV_LEN),
                                        (Q_LEN, KV_LEN)])
def test_cudnn_path_takes_every_bias_rank_the_xla_path_takes(qkv, bias_shape, monkeypatch):
    """A bias broadcastable to [batch, heads, q, kv] with fewer axes (as the docstring allows)
    reaches the cuDNN wrapper as 4-D, through JAX's XLA implementation of the same call (the
    kernel needs a GPU), and gives the reference result."""
    xla_attention = jax.nn.dot_product_attention
    monkeypatch.setattr(attention_module, "_fused_kernel_supports", lambda query: True)
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *args, implementation, **kw:
                        xla_attention(*args, implementation="xla", **kw))
    bias = jnp.asarray(np.random.default_rng(3).normal(size=bias_shape), jnp.float32)
    out = dot_product_attention(*qkv, bias=bias, implementation="cudnn")
    reference = dot_product_attention(*qkv, bias=bias, implementation="xla")
    np.testing.assert_allclose(out, reference, atol=1e-5)


def _relative_error(actual, expected):
    actual, expected = (np.asarray(x, np.float64) for x in (actual, expected))
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


on_gpu = pytest.mark.skipif(jax.default_backend() != "gpu",
                            reason="cuDNN's fused attention kernel needs a GPU")


@on_gpu
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("query_length", [197, 1])
def test_cudnn_kernel_runs_and_matches_xla_path_on_gpu(masked, query_length):
    """On a GPU, ``implementation="cudnn"`` reaches cuDNN's kernel (its custom call is in the
    compiled forward and backward programs) and computes the XLA path's function, gradients
    included: ViT-B's shapes, bfloat16 inputs; with a padding mask, rows with no key stay 0.
    One query is the ViT's last block, which computes only its class token."""
    rng = np.random.default_rng(7)
    shape = (4, 197, 12, 64)
    key, value = (jnp.asarray(rng.normal(size=shape), jnp.bfloat16) for _ in range(2))
    query, cotangent = (jnp.asarray(rng.normal(size=(4, query_length, 12, 64)), jnp.bfloat16)
                        for _ in range(2))
    mask = None
    if masked:
        lengths = np.array([197, 150, 64, 0])  # the last example is all padding
        tokens = np.where(np.arange(197)[None] < lengths[:, None], 1, 0)
        mask = make_padding_mask(jnp.asarray(tokens))[..., :query_length, :]

    def loss(implementation, q, k, v):
        out = dot_product_attention(q, k, v, mask=mask, implementation=implementation)
        return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32)), out

    results = {}
    for implementation in ("cudnn", "xla"):
        grad = jax.jit(jax.value_and_grad(functools.partial(loss, implementation),
                                          argnums=(0, 1, 2), has_aux=True))
        calls = attention_module.cudnn_attention_calls(
            grad.lower(query, key, value).compile().as_text())
        assert (calls >= 2) if implementation == "cudnn" else (calls == 0), (implementation,
                                                                              calls)
        (_, out), grads = grad(query, key, value)
        results[implementation] = (out, grads)
    (fused, fused_grads), (xla, xla_grads) = results["cudnn"], results["xla"]
    assert np.all(np.isfinite(np.asarray(fused, np.float32)))
    expected = numpy_attention(query, key, value, mask=mask)
    # bfloat16 outputs: relative errors of ~4e-3 from rounding alone.
    assert _relative_error(fused, expected) < 1e-2
    assert _relative_error(xla, expected) < 1e-2
    for fused_grad, xla_grad in zip(fused_grads, xla_grads, strict=True):
        assert np.all(np.isfinite(np.asarray(fused_grad, np.float32)))
        assert _relative_error(fused_grad, xla_grad) < 2e-2
    if masked:
        np.testing.assert_array_equal(np.asarray(fused[3], np.float32), 0.0)


def test_wrong_rank_is_a_value_error(qkv):
    query, key, value = qkv
    with pytest.raises(ValueError, match="batch, length, heads, head_dim"):
        dot_product_attention(query[0], key, value)


def test_causality_property():
    """Changing inputs after position t leaves the outputs up to t unchanged."""
    layer = MultiHeadAttention(num_heads=2)
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 9, 16)), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    mask = make_causal_mask(9)
    base = layer.apply(params, x, mask=mask)
    for t in range(9):
        changed = x.at[:, t + 1:].set(jnp.asarray(rng.normal(size=(2, 8 - t, 16)), jnp.float32))
        out = layer.apply(params, changed, mask=mask)
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
        if t < 8:
            assert not np.allclose(out[:, t + 1:], base[:, t + 1:])


def test_cross_attention_shapes_and_out_features():
    layer = MultiHeadAttention(num_heads=4, qkv_features=32, out_features=24)
    q = jnp.ones((2, 3, 16))
    kv = jnp.ones((2, 6, 8))
    params = layer.init(jax.random.key(0), q, kv)
    assert params["params"]["query"]["kernel"].shape == (16, 4, 8)
    assert params["params"]["key"]["kernel"].shape == (8, 4, 8)
    assert params["params"]["out"]["kernel"].shape == (4, 8, 24)
    assert layer.apply(params, q, kv).shape == (2, 3, 24)


# float32 matmuls at full precision: a GPU's default (TF32) rounds them to ~1e-3 and the
# two ways of computing would differ by that (seen on an H200, 2026-11-29).
@jax.default_matmul_precision("float32")
def test_decode_cache_adds_one_position_per_call():
    layer = MultiHeadAttention(num_heads=2, decode=True)
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
    variables = layer.init(jax.random.key(0), x)
    full = MultiHeadAttention(num_heads=2).apply(
        {"params": variables["params"]}, x, mask=make_causal_mask(6)
    )
    cache = variables["cache"]
    for t in range(6):
        out, mutated = layer.apply(
            {"params": variables["params"], "cache": cache}, x[:, t:t + 1], mutable=["cache"]
        )
        cache = mutated["cache"]
        assert int(cache["cache_index"]) == t + 1
        np.testing.assert_allclose(out[:, 0], full[:, t], atol=1e-5)
    with pytest.raises(ValueError, match="one position per call"):
        layer.apply({"params": variables["params"], "cache": cache}, x[:, :2], mutable=["cache"])


def test_attention_weights_sown_when_intermediates_mutable():
    layer = MultiHeadAttention(num_heads=2)
    x = jnp.ones((1, 4, 8))
    params = layer.init(jax.random.key(0), x)
    _, state = layer.apply(params, x, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention_weights"]
    assert weights.shape == (1, 2, 4, 4)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


def test_heads_must_divide_features():
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadAttention(num_heads=3, qkv_features=16)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiHeadAttention(num_heads=3).init(jax.random.key(0), jnp.ones((1, 2, 16)))


def test_attention_dropout_zeroes_weights_with_the_rate_and_rescales_the_kept_ones():
    """Inverted dropout on the attention weights: each weight is dropped with probability
    ``rate`` and the kept ones are divided by ``1 - rate``, so the expected output is the
    undropped one. With one-hot values (key k carries unit vector k) the output row *is* the
    dropped weight row, which is compared with the undropped weights returned alongside.
    At rate 0.25 a dropout that kept with probability ``rate`` (or forgot the rescaling)
    would be caught; the test at rate 0.5 above could not tell them apart."""
    rng = np.random.default_rng(11)
    batch, q_len, heads, kv_len, rate = 4, 16, 4, 8, 0.25
    query = jnp.asarray(rng.normal(size=(batch, q_len, heads, kv_len)), jnp.float32)
    key = jnp.asarray(rng.normal(size=(batch, kv_len, heads, kv_len)), jnp.float32)
    value = jnp.broadcast_to(jnp.eye(kv_len)[None, :, None, :], (batch, kv_len, heads, kv_len))
    out, weights = jax.jit(lambda q, k, v: dot_product_attention(
        q, k, v, dropout_rate=rate, dropout_rng=jax.random.key(0), deterministic=False,
        return_weights=True))(query, key, value)
    dropped = np.asarray(out).transpose(0, 2, 1, 3)  # [batch, heads, q, k], as the weights
    weights = np.asarray(weights)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)  # the undropped softmax
    zero = dropped == 0.0
    np.testing.assert_allclose(dropped[~zero], weights[~zero] / (1 - rate), rtol=1e-5)
    # 2048 weights: the dropped fraction's standard deviation is about 0.01.
    assert abs(zero.mean() - rate) < 0.04, zero.mean()


def test_deterministic_attention_ignores_the_dropout_rate(qkv):
    """``deterministic=True`` (evaluation) disables attention dropout whatever the rate: the
    exact softmax(QKᵀ/√d)V, with or without an rng, in the function and in the layer."""
    expected = numpy_attention(*qkv)
    for rng in (None, jax.random.key(0)):
        out = dot_product_attention(*qkv, dropout_rate=0.5, dropout_rng=rng, deterministic=True)
        np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)
    layer = MultiHeadAttention(num_heads=2, dropout_rate=0.5)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 8)), jnp.float32)
    params = layer.init(jax.random.key(0), x)
    np.testing.assert_array_equal(layer.apply(params, x, deterministic=True),
                                  MultiHeadAttention(num_heads=2).apply(params, x))
