"""Blocks, stacks and the seq2seq Transformer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer import (
    TRANSFORMER_CONFIGS,
    EncoderBlock,
    Transformer,
    create_transformer,
    shift_right,
    sinusoidal_table,
)

SOURCE = jnp.array([[3, 4, 5, 6, 1, 0], [2, 2, 1, 0, 0, 0]])
TARGET = jnp.array([[6, 5, 4, 3, 1], [2, 2, 1, 0, 0]])


def _tiny(**overrides):
    return create_transformer("tiny", vocab_size=12, **{"max_length": 16, "dropout_rate": 0.0,
                                                        **overrides})


def _decode_step_by_step(model, params, source, target):
    """Logits of the decoding-mode model fed the gold prefix one token at a time."""
    decoder = model.clone(decoding=True)
    cache = decoder.init(jax.random.key(0), source, target)["cache"]
    encoded = model.apply({"params": params}, source, method="encode")
    token = jnp.zeros((source.shape[0], 1), jnp.int32)
    step = jax.jit(lambda cache, token: decoder.apply(
        {"params": params, "cache": cache}, encoded, source, token,
        method="decode", mutable=["cache"]))
    steps = []
    for t in range(target.shape[1]):
        logits, state = step(cache, token)
        cache = state["cache"]
        steps.append(logits[:, 0])
        token = target[:, t:t + 1]
    return jnp.stack(steps, axis=1)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"norm_placement": "pre"}, pytest.param({"scan_layers": True}, marks=pytest.mark.slow),
     {"position_embedding": "learned"}, {"share_embeddings": True, "logits_via_embedding": True}],
    ids=["post-ln", "pre-ln", "scan", "learned-pos", "shared-emb"],
)
def test_cached_decoding_matches_full_pass(overrides):
    model = _tiny(**overrides)
    params = model.init(jax.random.key(1), SOURCE, TARGET)["params"]
    full = model.apply({"params": params}, SOURCE, TARGET)
    cached = _decode_step_by_step(model, params, SOURCE, TARGET)
    valid = np.asarray(TARGET > 0)  # padding positions are masked out of the full pass
    np.testing.assert_allclose(np.asarray(cached)[valid], np.asarray(full)[valid], atol=1e-5)


def test_decoder_is_causal():
    model = _tiny()
    params = model.init(jax.random.key(2), SOURCE, TARGET)["params"]
    base = model.apply({"params": params}, SOURCE, TARGET)
    changed_target = TARGET.at[0, 3:].set(jnp.array([7, 8]))
    out = model.apply({"params": params}, SOURCE, changed_target)
    # Logits at position t depend on targets < t (shifted right), so 0..3 are unchanged.
    np.testing.assert_allclose(out[0, :4], base[0, :4], atol=1e-6)
    assert not np.allclose(out[0, 4], base[0, 4])


@pytest.mark.slow
def test_source_padding_is_ignored():
    model = _tiny()
    params = model.init(jax.random.key(3), SOURCE, TARGET)["params"]
    padded_more = jnp.pad(SOURCE, ((0, 0), (0, 3)))
    np.testing.assert_allclose(
        model.apply({"params": params}, padded_more, TARGET),
        model.apply({"params": params}, SOURCE, TARGET),
        atol=1e-5,
    )


def test_named_configs_have_published_sizes():
    assert TRANSFORMER_CONFIGS["base"] == dict(
        emb_dim=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6, mlp_dim=2048)
    assert TRANSFORMER_CONFIGS["big"] == dict(
        emb_dim=1024, num_heads=16, num_encoder_layers=6, num_decoder_layers=6, mlp_dim=4096)


def test_base_parameter_count():
    """Transformer-base with a shared 37k vocabulary: about 63M parameters (paper: 65M)."""
    model = create_transformer("base", vocab_size=37000, share_embeddings=True,
                               logits_via_embedding=True)
    shapes = jax.eval_shape(model.init, jax.random.key(0), SOURCE, TARGET)
    count = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))
    # Embedding 37000*512 + 6 encoder blocks (3.15M each) + 6 decoder blocks (4.20M each).
    expected = 37000 * 512 + 6 * (4 * (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512 + 4 * 512)
    expected += 6 * (8 * (512 * 512 + 512) + 2 * 512 * 2048 + 2048 + 512 + 6 * 512)
    assert count == expected


@pytest.mark.slow
def test_train_mode_uses_dropout_rng():
    model = create_transformer("tiny", vocab_size=12, max_length=16, dropout_rate=0.3)
    params = model.init(jax.random.key(0), SOURCE, TARGET)["params"]
    a = model.apply({"params": params}, SOURCE, TARGET, train=True,
                    rngs={"dropout": jax.random.key(1)})
    b = model.apply({"params": params}, SOURCE, TARGET, train=True,
                    rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    with pytest.raises(Exception, match="dropout"):
        model.apply({"params": params}, SOURCE, TARGET, train=True)


@pytest.mark.slow
def test_remat_and_bfloat16_run_and_give_gradients():
    model = _tiny(remat_policy="dots", dtype=jnp.bfloat16, scan_layers=True)
    params = model.init(jax.random.key(0), SOURCE, TARGET)["params"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))

    def loss(p):
        return model.apply({"params": p}, SOURCE, TARGET).mean()

    grads = jax.jit(jax.grad(loss))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_encoder_block_post_and_pre_ln_differ_but_share_params():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 16)), jnp.float32)
    pre = EncoderBlock(num_heads=2, mlp_dim=32, norm_placement="pre")
    post = EncoderBlock(num_heads=2, mlp_dim=32, norm_placement="post")
    params = pre.init(jax.random.key(0), x)
    assert jax.tree.structure(params) == jax.tree.structure(post.init(jax.random.key(0), x))
    assert not np.allclose(pre.apply(params, x), post.apply(params, x))
    # Post-LN output is normalised per token.
    np.testing.assert_allclose(post.apply(params, x).mean(-1), 0.0, atol=1e-5)


def test_shift_right_and_sinusoids():
    np.testing.assert_array_equal(shift_right(jnp.array([[5, 6, 7]])), [[0, 5, 6]])
    table = sinusoidal_table(50, 8)
    np.testing.assert_allclose(table[0], [0, 1, 0, 1, 0, 1, 0, 1], atol=1e-7)
    np.testing.assert_allclose(table[7, 2], np.sin(7 / 10_000 ** (2 / 8)), rtol=1e-6)
    np.testing.assert_allclose(table[7, 3], np.cos(7 / 10_000 ** (2 / 8)), rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(emb_dim=30, num_heads=4), "num_heads"),
        (dict(norm_placement="middle"), "norm_placement"),
        (dict(activation="swish"), "activation"),
        (dict(position_embedding="rotary"), "position_embedding"),
        (dict(remat_policy="some"), "remat_policy"),
        (dict(num_encoder_layers=0), "num_encoder_layers=0"),
        (dict(num_decoder_layers=0), "num_decoder_layers=0"),
        (dict(num_heads=0), "num_heads=0"),
        (dict(mlp_dim=0), "mlp_dim=0"),
        (dict(output_vocab_size=1), "output_vocab_size=1"),
        (dict(vocab_size=1), "vocab_size"),
        (dict(share_embeddings=True, output_vocab_size=7), "share_embeddings"),
        (dict(attention_implementation="flash"), "implementation"),
        (dict(dropout_rate=1.5), "dropout_rate"),
    ],
)
def test_invalid_configuration_fails_with_value_error(kwargs, field):
    params = dict(vocab_size=12, emb_dim=32, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=1, mlp_dim=32, max_length=16)
    params.update(kwargs)
    with pytest.raises(ValueError, match=field):  # at construction, before any init
        Transformer(**params)


@pytest.mark.parametrize("bad_id", [12, 99, -1])
@pytest.mark.parametrize("argument", ["inputs", "targets"])
def test_token_ids_outside_the_vocabulary_fail_naming_the_argument(bad_id, argument):
    # nn.Embed would return NaN rows (ids >= vocab) or wrap around (negative ids) silently.
    model = _tiny()
    params = model.init(jax.random.key(0), SOURCE, TARGET)["params"]
    ids = {"inputs": SOURCE, "targets": TARGET}
    ids[argument] = ids[argument].at[0, 1].set(bad_id)
    with pytest.raises(ValueError, match=rf"{argument} token ids must be in \[0, 12\) "
                                         rf"\(vocab_size=12\); got ids from {min(bad_id, 0)} "
                                         rf"to {max(bad_id, 6)}"):
        model.apply({"params": params}, ids["inputs"], ids["targets"])


def test_target_ids_are_checked_against_the_output_vocabulary():
    model = _tiny(output_vocab_size=8)
    params = model.init(jax.random.key(0), SOURCE, TARGET)["params"]
    model.apply({"params": params}, SOURCE, TARGET.at[0, 0].set(7))  # 7 < 8: fine
    with pytest.raises(ValueError, match=r"targets token ids must be in \[0, 8\) "
                                         r"\(output_vocab_size=8\); got ids from 0 to 9"):
        model.apply({"params": params}, SOURCE, TARGET.at[0, 0].set(9))  # a source id, 9 < 12


def test_packed_rows_need_both_segmentations():
    model = _tiny()
    params = model.init(jax.random.key(0), SOURCE, TARGET)["params"]
    segments = {"inputs_segmentation": jnp.ones_like(SOURCE),
                "targets_segmentation": jnp.ones_like(TARGET)}
    for given in segments:
        with pytest.raises(ValueError, match=f"need both.*got only {given}"):
            model.apply({"params": params}, SOURCE, TARGET, **{given: segments[given]})


@pytest.mark.parametrize("source,target", [
    (SOURCE, jnp.concatenate([TARGET, TARGET[:1]])),  # 2 vs 3: an unnamed broadcasting error
    (SOURCE[:1], TARGET),  # 1 vs 2: broadcast silently, both targets reading one source
    (SOURCE[0], TARGET[0]),  # unbatched: an IndexError in the padding mask
], ids=["2-vs-3", "1-vs-2", "rank-1"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_inputs_and_targets_need_the_same_batch_size(source, target, jit):
    model = _tiny()
    params = model.init(jax.random.key(0), SOURCE, TARGET)["params"]
    apply = jax.jit(model.apply) if jit else model.apply  # shapes are static under jit
    expected = (rf"same batch size; got inputs \({', '.join(map(str, source.shape))},?\) "
                rf"and targets \({', '.join(map(str, target.shape))},?\)")
    with pytest.raises(ValueError, match=expected):
        apply({"params": params}, source, target)
    encoded = model.apply({"params": params}, SOURCE, method="encode")
    if source.shape[0] == 1:  # decode on its own, with the encoding of a batch of 2
        with pytest.raises(ValueError, match=expected):
            model.apply({"params": params}, encoded[:1], source, target, method="decode")


def test_sequence_longer_than_learned_table_fails():
    model = _tiny(position_embedding="learned", max_length=4)
    with pytest.raises(ValueError, match="max_length=4"):
        model.init(jax.random.key(0), SOURCE, TARGET)


def test_unknown_named_config():
    with pytest.raises(ValueError, match="known"):
        create_transformer("huge", vocab_size=10)


@pytest.mark.slow
def test_packed_rows_equal_separate_examples():
    """Two examples packed into one row give the logits of each example run alone."""
    model = _tiny(position_embedding="learned")
    first_in, first_out = jnp.array([[3, 4, 5, 1]]), jnp.array([[6, 7, 1]])
    second_in, second_out = jnp.array([[8, 1]]), jnp.array([[9, 9, 10, 1]])
    params = model.init(jax.random.key(4), first_in, first_out)["params"]
    packed = dict(
        inputs=jnp.array([[3, 4, 5, 1, 8, 1, 0]]),
        targets=jnp.array([[6, 7, 1, 9, 9, 10, 1, 0]]),
        inputs_segmentation=jnp.array([[1, 1, 1, 1, 2, 2, 0]]),
        targets_segmentation=jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]]),
        inputs_positions=jnp.array([[0, 1, 2, 3, 0, 1, 0]]),
        targets_positions=jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]]),
    )
    logits = model.apply({"params": params}, **packed)
    alone_first = model.apply({"params": params}, first_in, first_out)
    alone_second = model.apply({"params": params}, second_in, second_out)
    np.testing.assert_allclose(logits[0, :3], alone_first[0], atol=1e-5)
    np.testing.assert_allclose(logits[0, 3:7], alone_second[0], atol=1e-5)


@pytest.mark.parametrize("norm_placement", ["pre", "post"])
def test_encoder_block_output_tokens_are_the_full_blocks_first_positions(norm_placement):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 6, 16)), jnp.float32)
    # Each query row hides a different key, so the mask's query axis must be cut as well.
    mask = ~jnp.eye(6, k=1, dtype=bool)[None, None]
    block = EncoderBlock(num_heads=2, mlp_dim=32, norm_placement=norm_placement)
    params = block.init(jax.random.key(0), x, mask)
    full = block.apply(params, x, mask)
    cut = block.apply(params, x, mask, True, 2)
    assert cut.shape == (2, 2, 16)
    np.testing.assert_allclose(cut, full[:, :2], rtol=1e-5, atol=1e-6)
    # The positions not computed still reach the kept ones as keys and values.
    # (A change LayerNorm cannot remove: not a constant shift.)
    moved = block.apply(params, x.at[:, 4].multiply(jnp.linspace(-1.0, 2.0, 16)), mask, True, 2)
    assert not np.allclose(moved, cut, atol=1e-3)


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_bfloat16_stacks_start_from_one_rounding_of_embedding_plus_position(part):
    """Under bfloat16 the first block reads bf16(sqrt(d)·E[id] + PE[pos]), the sum taken in
    float32 as in flax's wmt example; rounding each term to bfloat16 first differs in the
    last bit for some elements."""
    import flax.linen as nn

    from transformer import DecoderBlock

    model = _tiny(dtype=jnp.bfloat16)
    params = jax.jit(model.init)(jax.random.key(0), SOURCE, TARGET)["params"]
    block_cls = EncoderBlock if part == "encoder" else DecoderBlock
    seen = []

    def record_first_input(next_fun, args, kwargs, context):
        if isinstance(context.module, block_cls) and context.method_name == "__call__":
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record_first_input):
        model.apply({"params": params}, SOURCE, TARGET)
    tokens = SOURCE if part == "encoder" else shift_right(TARGET)
    table = params["source_embedding" if part == "encoder" or model.share_embeddings
                   else "target_embedding"]["embedding"]
    embedded = np.asarray(table)[np.asarray(tokens)] * np.sqrt(np.float32(model.emb_dim))
    summed = embedded + sinusoidal_table(16, model.emb_dim)[:tokens.shape[1]]
    assert seen[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(seen[0], np.float32),
                                  np.asarray(jnp.asarray(summed, jnp.bfloat16), np.float32))


def test_training_block_drops_the_mlp_hidden_units_and_its_output_once_each():
    """Dropout in an encoder block's MLP branch, in training: on the hidden units and on the
    branch's output, once each (ViT's MlpBlock; "Attention Is All You Need" §5.4). With the
    attention branch silenced (zero output projection) and identity MLP weights, a pre-LN
    block computes x + drop(drop(relu(LN(x)))): every positive unit is either dropped or
    scaled by 1 / (1 − rate)², kept with probability (1 − rate)²."""
    rate, width = 0.5, 32
    x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 16, width)), jnp.float32)
    block = EncoderBlock(num_heads=2, mlp_dim=width, dropout_rate=rate, activation="relu")
    params = jax.eval_shape(block.init, jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    for norm in ("LayerNorm_0", "LayerNorm_2"):
        params[norm]["scale"] = jnp.ones(width)
    for dense in ("Dense_0", "Dense_1"):
        params["MlpBlock_3"][dense]["kernel"] = jnp.eye(width)
    out = jax.jit(lambda p: block.apply({"params": p}, x, None, False,
                                        rngs={"dropout": jax.random.key(1)}))(params)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    hidden = np.maximum(np.asarray((x - mean) / np.sqrt(var + 1e-6)), 0.0)
    positive = hidden > 0.1
    ratio = np.asarray(out - x)[positive] / hidden[positive]
    kept = np.isclose(ratio, 1 / (1 - rate) ** 2, rtol=1e-3)
    assert np.all(kept | np.isclose(ratio, 0.0, atol=1e-3)), np.unique(ratio.round(2))
    # About 900 positive units: the kept fraction's standard deviation is about 0.015.
    assert abs(kept.mean() - (1 - rate) ** 2) < 0.07, kept.mean()


def test_stack_passes_its_layer_norm_epsilon_to_every_block():
    """``layer_norm_epsilon`` (1e-6 for ViT, 1e-12 for BERT) reaches the blocks' LayerNorms,
    not only the stack's own. A post-LN block whose branches output zeros computes
    LN(LN(x)); with ε = 1 (far from the default) that is written out in NumPy."""
    from transformer import Encoder

    eps, width = 1.0, 8
    x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 3, width)), jnp.float32)
    encoder = Encoder(num_layers=1, num_heads=2, mlp_dim=16, position_embedding="none",
                      norm_placement="post", layer_norm_epsilon=eps)
    params = jax.eval_shape(encoder.init, jax.random.key(0), x)["params"]
    # Zero weights silence both branches; LayerNorm scales of one keep them plain.
    params = jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.ones(s.shape) if path[-1].key == "scale" else jnp.zeros(s.shape),
        params)

    def layer_norm(y):
        return (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + eps)

    np.testing.assert_allclose(jax.jit(lambda p: encoder.apply({"params": p}, x))(params),
                               layer_norm(layer_norm(np.asarray(x, np.float64))),
                               rtol=1e-5, atol=1e-6)


def test_logits_via_embedding_use_the_target_table():
    """Tied output projection (§3.4) without shared embeddings: the logits are the decoder's
    output times the *target* embedding table transposed, one per target token."""
    model = create_transformer("micro", vocab_size=12, output_vocab_size=8, max_length=16,
                               dropout_rate=0.0, logits_via_embedding=True)
    shapes = jax.eval_shape(model.init, jax.random.key(0), SOURCE, TARGET)["params"]
    rng = np.random.default_rng(8)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)
    assert "logits_dense" not in params
    # Jitted: op by op, the forward pass takes seconds.
    logits, state = jax.jit(lambda p: model.apply(
        {"params": p}, SOURCE, TARGET,
        capture_intermediates=lambda module, method: module.name == "decoder"
        and method == "__call__"))(params)
    (decoded,) = state["intermediates"]["decoder"]["__call__"]
    assert logits.shape == (2, 5, 8)
    table = np.asarray(params["target_embedding"]["embedding"], np.float64)
    np.testing.assert_allclose(logits, np.asarray(decoded, np.float64) @ table.T,
                               rtol=1e-4, atol=1e-4)
