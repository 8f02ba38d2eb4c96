"""VisionTransformer: official sizes, forward behaviour, scan/remat, intermediates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit
from trainer.throughput import lowered_flops
from vit.checkpoint import flatten_params, stack_blocks, unflatten_params

PUBLISHED = {  # name: (hidden, layers, heads, mlp, patch)
    "ViT-Ti_16": (192, 12, 3, 768, 16), "ViT-S_16": (384, 12, 6, 1536, 16),
    "ViT-S_32": (384, 12, 6, 1536, 32), "ViT-B_16": (768, 12, 12, 3072, 16),
    "ViT-B_32": (768, 12, 12, 3072, 32), "ViT-B_8": (768, 12, 12, 3072, 8),
    "ViT-L_16": (1024, 24, 16, 4096, 16), "ViT-L_32": (1024, 24, 16, 4096, 32),
    "ViT-H_14": (1280, 32, 16, 5120, 14),
}
PARAMETER_COUNTS = {"ViT-Ti_16": 5_717_416, "ViT-S_16": 22_050_664, "ViT-B_16": 86_567_656,
                    "ViT-B_32": 88_224_232, "ViT-L_16": 304_326_632}
MICRO = dict(image_size=16, patch_size=4, hidden_size=32, num_layers=2, num_heads=2,
             mlp_dim=64)


def _count(model, image_size=224):
    shapes = jax.eval_shape(model.init, jax.random.key(0),
                            jnp.zeros((1, image_size, image_size, 3)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name", list(PARAMETER_COUNTS))
def test_parameter_counts_of_official_variants(name):
    assert _count(vit.create_model(name, 1000)) == PARAMETER_COUNTS[name]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_sizes(name):
    model = vit.create_model(name, 1000)
    hidden, layers, heads, mlp, patch = PUBLISHED[name]
    assert (model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim,
            model.patch_size) == (hidden, layers, heads, mlp, patch)


def _micro(**overrides):
    return vit.create_model("ViT-micro", 5, **{**MICRO, **overrides})


IMAGES = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)


def _randomized(params, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * 0.1, x.dtype), params)


def test_forward_shapes_and_dropout():
    model = _micro(dropout_rate=0.3)
    params = _randomized(model.init(jax.random.key(0), IMAGES)["params"])
    logits = model.apply({"params": params}, IMAGES, train=False)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    a = model.apply({"params": params}, IMAGES, train=True, rngs={"dropout": jax.random.key(1)})
    b = model.apply({"params": params}, IMAGES, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b) and not np.allclose(a, logits)
    np.testing.assert_allclose(logits, model.apply({"params": params}, IMAGES), rtol=1e-6)


def test_head_starts_at_zero_and_gap_has_no_class_token():
    params = _micro().init(jax.random.key(0), IMAGES)["params"]
    assert not np.any(params["head"]["kernel"])
    assert not np.any(params["cls"])  # the official code's class token starts at zero too
    gap = _micro(classifier="gap").init(jax.random.key(0), IMAGES)["params"]
    assert "cls" not in gap
    assert gap["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 16, 32)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 32)


def test_distillation_token_pair_in_training_mean_at_inference():
    model = _micro(distillation_token=True)
    params = _randomized(model.init(jax.random.key(0), IMAGES)["params"])
    assert params["dist_token"].shape == (1, 1, 32) and "head_dist" in params
    cls_logits, dist_logits = model.apply({"params": params}, IMAGES, train=True)
    assert not np.allclose(cls_logits, dist_logits)
    np.testing.assert_allclose(model.apply({"params": params}, IMAGES),
                               (cls_logits + dist_logits) / 2, rtol=1e-6)


def test_drop_path_drops_whole_examples_and_scales_the_rest():
    from transformer.layers import drop_path

    x = jnp.ones((4000, 3, 2))
    out = np.asarray(drop_path(x, 0.25, jax.random.key(0)))
    per_example = out.reshape(4000, -1)
    assert np.all((per_example == 0).all(1) | np.isclose(per_example, 1 / 0.75).all(1))
    assert abs((per_example == 0).all(1).mean() - 0.25) < 0.03  # 4.5 standard deviations
    assert abs(out.mean() - 1.0) < 0.05


def _block_states(model, params, images, train, rngs=None):
    # Jitted: run op by op, the forward passes of these tests take seconds each.
    apply = jax.jit(lambda p, x, r: model.apply({"params": p}, x, train=train, rngs=r,
                                                mutable=["intermediates"])[1])
    blocks = apply(params, images, rngs)["intermediates"]["Transformer"]
    if "encoderblock" in blocks:  # scanned: [num_layers, ...] under one name
        (stacked,) = blocks["encoderblock"]["block"]["hidden_state"]
        return [np.asarray(s) for s in stacked]
    return [np.asarray(blocks[f"encoderblock_{i}"]["hidden_state"][0]) for i in range(2)]


@pytest.mark.slow  # 8-15 s each; test_drop_path_drops_whole_examples... stays quick
@pytest.mark.parametrize("overrides", [{}, dict(scan_layers=True),
                                       dict(scan_layers=True, remat_policy="full"),
                                       dict(remat_policy="dots")])
def test_drop_path_rises_from_none_at_the_first_block_to_the_rate_at_the_last(overrides):
    """Two blocks, drop_path_rate=0.9: the first block never drops (rate 0), the second
    drops each branch with probability 0.9, so for most examples (both branches dropped,
    0.81) its output is its input; evaluation drops nothing."""
    images = jnp.asarray(np.random.default_rng(1).normal(size=(64, 16, 16, 3)), jnp.float32)
    plain = _micro()
    params = _randomized(plain.init(jax.random.key(0), images)["params"])
    model = _micro(drop_path_rate=0.9, **overrides)
    model_params = params
    if model.scan_layers:
        model_params = unflatten_params(stack_blocks(flatten_params(params), 2))
    rngs = {"dropout": jax.random.key(3)}
    first, second = _block_states(model, model_params, images, True, rngs)
    plain_first, plain_second = _block_states(plain, params, images, True, rngs)
    np.testing.assert_allclose(first, plain_first, rtol=1e-5, atol=1e-6)
    unchanged = np.all(np.isclose(second, first, rtol=1e-6, atol=1e-6), axis=(1, 2))
    assert 0.6 < unchanged.mean() < 0.95, unchanged.mean()
    assert not np.allclose(second, plain_second)
    np.testing.assert_allclose(
        _block_states(model, model_params, images, False)[1],
        _block_states(plain, params, images, False)[1], rtol=1e-5, atol=1e-6)
    grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, images, train=True,
                                                   rngs=rngs).sum()))(model_params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_drop_path_rate_zero_leaves_training_unchanged_and_one_is_refused():
    model, plain = _micro(drop_path_rate=0.0, dropout_rate=0.2), _micro(dropout_rate=0.2)
    params = _randomized(plain.init(jax.random.key(0), IMAGES)["params"])
    rngs = {"dropout": jax.random.key(1)}
    np.testing.assert_array_equal(
        *(jax.jit(lambda p, m=m: m.apply({"params": p}, IMAGES, train=True, rngs=rngs))(params)
          for m in (model, plain)))
    with pytest.raises(ValueError, match=r"drop_path_rate=1.0 must be in \[0, 1\)"):
        _micro(drop_path_rate=1.0)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [dict(scan_layers=True),
                                       dict(scan_layers=True, remat_policy="full"),
                                       dict(remat_policy="dots")])
def test_scan_and_remat_give_the_same_logits(overrides):
    base = _micro()
    params = _randomized(base.init(jax.random.key(0), IMAGES)["params"])
    other = _micro(**overrides)
    other_params = params
    if other.scan_layers:
        other_params = unflatten_params(stack_blocks(flatten_params(params), 2))
    expected = base.apply({"params": params}, IMAGES)
    np.testing.assert_allclose(other.apply({"params": other_params}, IMAGES), expected,
                               rtol=1e-5, atol=1e-6)
    grads = jax.grad(lambda p: other.apply({"params": p}, IMAGES).sum())(other_params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_intermediates_without_second_pass():
    model = _micro()
    params = _randomized(model.init(jax.random.key(0), IMAGES)["params"])
    logits, state = model.apply({"params": params}, IMAGES, mutable=["intermediates"])
    np.testing.assert_allclose(logits, model.apply({"params": params}, IMAGES), rtol=1e-6)
    blocks = state["intermediates"]["Transformer"]
    for i in range(2):
        (hidden,) = blocks[f"encoderblock_{i}"]["hidden_state"]
        (weights,) = blocks[f"encoderblock_{i}"]["MultiHeadDotProductAttention_1"][
            "attention_weights"]
        assert hidden.shape == (2, 17, 32) and weights.shape == (2, 2, 17, 17)
    assert state["intermediates"]["pre_logits"][0].shape == (2, 32)


@pytest.mark.slow
def test_bfloat16_computation_keeps_float32_params():
    model = _micro(dtype=jnp.bfloat16)
    params = model.init(jax.random.key(0), IMAGES)["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert model.apply({"params": params}, IMAGES).dtype == jnp.float32


def test_patch_embedding_is_the_strided_convolution():
    """The matmul form of the patch embedding: the official Conv's function, parameters and
    gradients, on a non-square image with non-square patches."""
    import flax.linen as nn

    from vit.model import PatchEmbedding

    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 48, 3)), jnp.float32)
    conv = nn.Conv(8, (16, 12), strides=(16, 12), padding="VALID")
    embed = PatchEmbedding(8, patch_size=(16, 12))
    params = conv.init(jax.random.key(3), images)
    # Same parameter tree and the same initial values for the same key.
    assert jax.tree.map(jnp.shape, embed.init(jax.random.key(3), images)) == \
        jax.tree.map(jnp.shape, params)
    np.testing.assert_array_equal(embed.init(jax.random.key(3), images)["params"]["kernel"],
                                  params["params"]["kernel"])
    params = {"params": {**params["params"], "bias": jnp.arange(8.0)}}
    out = embed.apply(params, images)
    assert out.shape == (2, 2, 4, 8)
    np.testing.assert_allclose(out, conv.apply(params, images), atol=1e-5, rtol=1e-5)

    def loss(module):
        return lambda p: jnp.sum(jnp.sin(module.apply(p, images)))

    got, want = jax.grad(loss(embed))(params), jax.grad(loss(conv))(params)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(got["params"][name], want["params"][name], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("overrides", [{}, dict(distillation_token=True),
                                       dict(representation_size=16),
                                       dict(remat_policy="dots")])
def test_last_block_computing_only_the_read_tokens_changes_no_logit_or_gradient(overrides):
    model = _micro(**overrides)
    reference = model.clone(skip_unread_tokens=False)
    params = _randomized(model.init(jax.random.key(0), IMAGES)["params"])
    for train in (False, True):
        np.testing.assert_allclose(model.apply({"params": params}, IMAGES, train=train),
                                   reference.apply({"params": params}, IMAGES, train=train),
                                   rtol=1e-5, atol=1e-6)

    def grads(module):
        return jax.grad(lambda p: jnp.sum(jnp.sin(module.apply({"params": p}, IMAGES))))(params)

    got, want = grads(model), grads(reference)
    # Relative to the largest gradient: some are zero in exact arithmetic (a key bias shifts
    # every logit of a row alike), so each leaf's own scale would be rounding noise.
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_last_block_skips_the_work_of_the_tokens_no_head_reads(classifier):
    """XLA's FLOP count of a training gradient: the class-token model's last block computes
    one of its 17 tokens (its keys and values excepted); a pooling model reads every token
    and computes all of them."""
    model = _micro(classifier=classifier)
    params = model.init(jax.random.key(0), IMAGES)["params"]

    def flops(module):
        loss = lambda p: jnp.sum(module.apply({"params": p}, IMAGES, train=True))  # noqa: E731
        return lowered_flops(jax.jit(jax.grad(loss)), params)

    got, want = flops(model), flops(model.clone(skip_unread_tokens=False))
    if classifier == "gap":
        assert got == want
    else:
        # Two blocks: the last is about half the count, and most of it is skipped.
        assert got < 0.75 * want, (got, want)


def test_tokens_are_class_distillation_patches_and_each_head_reads_its_own():
    """DeiT's layout: the encoder reads [class token, distillation token, patches], the head
    reads the normalised class token (position 0) and ``head_dist`` the distillation token
    (position 1). Checked against the parameters and a LayerNorm written out in NumPy, from
    the sown encoder input (position embeddings added) and the last block's output; the two
    heads would agree on a swapped or a shared position only by accident."""
    model = _micro(distillation_token=True)
    # Random parameters of the model's shapes (its own init, op by op, takes seconds).
    params = _randomized(jax.eval_shape(model.init, jax.random.key(0), IMAGES)["params"])
    # Jitted: op by op, this forward pass takes seconds.
    (cls_logits, dist_logits), state = jax.jit(lambda p: model.apply(
        {"params": p}, IMAGES, train=True, mutable=["intermediates"],
        capture_intermediates=lambda module, method: module.name == "posembed_input"))(params)
    encoder = state["intermediates"]["Transformer"]
    (embedded,) = encoder["posembed_input"]["__call__"]
    posembed = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
    assert posembed.shape == (1, 2 + 16, 32)
    tokens = np.asarray(embedded) - posembed
    np.testing.assert_allclose(tokens[:, 0], np.broadcast_to(params["cls"][0], (2, 32)),
                               atol=1e-6)
    np.testing.assert_allclose(tokens[:, 1], np.broadcast_to(params["dist_token"][0], (2, 32)),
                               atol=1e-6)
    (last,) = encoder["encoderblock_1"]["hidden_state"]
    norm = params["Transformer"]["encoder_norm"]
    last = np.asarray(last, np.float64)
    mean, var = last.mean(-1, keepdims=True), last.var(-1, keepdims=True)
    normed = (last - mean) / np.sqrt(var + 1e-6) * norm["scale"] + norm["bias"]
    for logits, name, position in ((cls_logits, "head", 0), (dist_logits, "head_dist", 1)):
        head = params[name]
        np.testing.assert_allclose(logits, normed[:, position] @ head["kernel"] + head["bias"],
                                   rtol=1e-4, atol=1e-5, err_msg=name)
