"""Sequence-to-sequence learning with the encoder–decoder Transformer."""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import input_pipeline
import input_pipeline.text
import transformer
from trainer import partitioning
from trainer.tasks import common
from trainer.tasks.base import Batch, Metrics, Task, masked_sum, register_task
from transformer.masks import PAD_ID

# The source's own default, for a config that does not set source_kwargs.max_len.
_SYNTHETIC_MAX_LEN_DEFAULT = inspect.signature(
    input_pipeline.Seq2SeqTaskSource).parameters["max_len"].default

# Decoding strategies BLEU can use: "sample" needs an rng, which generation_metrics has none
# of (and a sampled BLEU would not be reproducible between evaluations anyway).
BLEU_STRATEGIES = ("beam", "greedy")


def build_transformer(model_config: Any, vocab_size: int, dtype: Any) -> transformer.Transformer:
    overrides = common.model_overrides(model_config, reserved=("name", "vocab_size"))
    return transformer.create_transformer(model_config.name, vocab_size, dtype=dtype, **overrides)


def predictions(logits: jax.Array) -> jax.Array:
    """Argmax ``[batch, length]`` of logits ``[batch, length, vocab]`` over every token but
    ``PAD_ID``, which decoding never emits, so that teacher-forced accuracy and exact match
    score what greedy decoding would output."""
    return jnp.argmax(logits.at[..., PAD_ID].set(-jnp.inf), axis=-1)


def _packing(batch: Batch) -> dict[str, Any]:
    """The model's packing arguments from grain's packed-batch keys (empty when unpacked)."""
    if "inputs_segment_ids" not in batch:
        return {}
    return {"inputs_segmentation": batch["inputs_segment_ids"],
            "targets_segmentation": batch["targets_segment_ids"],
            "inputs_positions": batch["inputs_positions"],
            "targets_positions": batch["targets_positions"]}


@register_task("seq2seq")
class Seq2SeqTask(Task):
    """Label-smoothed cross-entropy over non-padding target tokens (teacher forcing).

    The training loss is the cross-entropy against the smoothed targets (``optax.smooth_labels``:
    ``1 - α`` on the target plus ``α / V`` everywhere) with no normalising constant subtracted,
    unlike Flax's examples/wmt: it cannot go below the entropy of the smoothed targets, about
    1.36 nats for ``V = 32000`` and ``α = 0.1``, where Flax's reaches 0. The evaluation loss is
    the plain (unsmoothed) cross-entropy, so the two are not comparable with each other either.

    Evaluation reports token accuracy and exact match. The predicted token is the argmax over
    every token but ``PAD_ID`` (decoding never emits it); exact match under teacher forcing
    then equals exact match of greedy decoding (ties aside): greedy decoding reproduces the
    target exactly if and only if every teacher-forced prediction is right.

    Config: ``model`` (``name`` of ``transformer.TRANSFORMER_CONFIGS``, ``vocab_size`` and
    overrides), ``dataset`` (``name`` such as ``synthetic/reverse``, splits, ``source_kwargs``),
    ``label_smoothing``, ``pack_examples`` (pack several examples per training row),
    ``bleu_eval_batches``, ``bleu_strategy`` (one of ``BLEU_STRATEGIES``) and
    ``bleu_extra_length`` (each output at most its source's length plus this many tokens,
    the paper's 50; None: ``max_length`` alone) for text datasets.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.vocab_size = config.model.vocab_size
        self.model = build_transformer(config.model, self.vocab_size,
                                       common.computation_dtype(config))
        if config.dataset.name.startswith("synthetic/"):
            # Synthetic examples hold max_len content tokens, a possible carry digit and EOS.
            max_len = config.dataset.get("source_kwargs", {}).get(
                "max_len", _SYNTHETIC_MAX_LEN_DEFAULT)
            self.max_length = max_len + 2
        else:
            self.max_length = config.dataset.get("max_length", self.model.max_length)
        # The field a user raises when the training filter keeps no pair (text datasets).
        self._max_length_field = ("config.dataset.max_length" if "max_length" in config.dataset
                                  else "config.model.max_length")
        if self.max_length > self.model.max_length:
            raise ValueError(
                f"examples of {self.max_length} tokens exceed config.model.max_length="
                f"{self.model.max_length}")
        strategy = config.get("bleu_strategy", "beam")
        # Checked here rather than at the first evaluation, which may be hours into a run.
        if strategy not in BLEU_STRATEGIES:
            raise ValueError(
                f"config.bleu_strategy={strategy!r} is not supported; expected one of "
                f"{BLEU_STRATEGIES} ('sample' needs an rng that BLEU evaluation does not have)")
        extra_length = config.get("bleu_extra_length")
        if extra_length is not None and (not isinstance(extra_length, int)
                                         or isinstance(extra_length, bool) or extra_length < 0):
            raise ValueError(f"config.bleu_extra_length={extra_length!r} must be an integer >= "
                             "0 (outputs of at most source length + it; the paper: 50) or None")
        self._tokenize = None

    def transforms(self, training: bool = False) -> list:
        """None for synthetic tasks; for text datasets, sentencepiece tokenisation to
        ``max_length`` (training the vocabulary on the train split first if it is missing).

        Evaluation (``training=False``) keeps every pair and truncates a side longer than
        ``max_length`` tokens (EOS included, kept last). Training drops such pairs instead, as
        Flax's WMT example does: a cut sentence ended by EOS teaches the model to stop early.
        """
        dataset = self.config.dataset
        if dataset.name.startswith("synthetic/"):
            return []
        if self._tokenize is None:
            tokenizer = input_pipeline.text.load_or_train_sentencepiece(
                dataset.vocab_path, common.data_source(self.config, dataset.train_split),
                (dataset.source_key, dataset.target_key), dataset.vocab_size,
                dataset.get("vocab_train_sentences", 1_000_000))
            # One sentencepiece model tokenises both sides: its ids must fit the source
            # vocabulary and the target one, which output_vocab_size may make smaller.
            for field, size in (("vocab_size", self.vocab_size),
                                (self.model.target_vocab_field, self.model.target_vocab_size)):
                if tokenizer.vocab_size > size:
                    raise ValueError(
                        f"the vocabulary {dataset.vocab_path} has {tokenizer.vocab_size} tokens "
                        f"but config.model.{field}={size}")
            self._tokenize = input_pipeline.text.TokenizeTranslation(
                tokenizer, dataset.source_key, dataset.target_key, self.max_length)
        if not training:
            return [self._tokenize]
        return [input_pipeline.text.TokenizeTranslation(
                    self._tokenize.tokenizer, dataset.source_key, dataset.target_key,
                    self.max_length, truncate=False),
                input_pipeline.text.DropLongerThan(self.max_length,
                                                   setting=self._max_length_field)]

    def train_iterator(self, process_index: int, process_count: int):
        pack = self.max_length if self.config.get("pack_examples", False) else None
        return common.train_iterator(self.config, self.transforms(training=True),
                                     process_index, process_count, pack_length=pack)

    def eval_batches(self, process_index: int, process_count: int):
        return common.eval_batches(self.config, self.transforms(), process_index, process_count)

    def generation_metrics(self, params: Any, frozen: Any, mesh: Any, process_index: int,
                           process_count: int) -> dict[str, float]:
        """Corpus BLEU (sacrebleu) of decoded, detokenised outputs against the detokenised
        references, on the first ``config.bleu_eval_batches`` eval batches of text datasets."""
        if self._tokenize is None or not self.config.get("bleu_eval_batches", 0):
            return {}
        import sacrebleu
        from jax.experimental import multihost_utils

        from transformer import decoding

        tokenizer = self._tokenize.tokenizer
        decode = jax.jit(lambda p, x: decoding.decode(
            self.model, p, x, max_decode_length=self.max_length,
            strategy=self.config.get("bleu_strategy", "beam"), beam_size=4, alpha=0.6,
            extra_length=self.config.get("bleu_extra_length")))
        hypotheses, references = [], []
        for index, batch in enumerate(self.eval_batches(process_index, process_count)):
            if index >= self.config.bleu_eval_batches:
                break
            # One global array per key, as the eval step gets them (each host holds its part),
            # gathered whole onto every host in the same row order.
            batch = partitioning.global_batch(
                {key: batch[key] for key in ("inputs", "targets", "mask")}, mesh)
            tokens, targets, mask = (np.asarray(x) for x in multihost_utils.process_allgather(
                (decode(params, batch["inputs"]), batch["targets"], batch["mask"]), tiled=True))
            tokens, targets = tokens[mask > 0], targets[mask > 0]
            hypotheses += [tokenizer.decode(t) for t in tokens]
            references += [tokenizer.decode(t) for t in targets]
        if not hypotheses:
            return {}
        return {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score)}

    def check_batch(self, batch: Batch, where: str) -> None:
        """Raise ``ValueError`` unless ``inputs`` and ``targets`` are ``[batch, length]`` ids
        within the model's source and target vocabularies (inside the jitted step an id out of
        range silently becomes a NaN embedding row or a NaN loss)."""
        # The targets index the target vocabulary, which output_vocab_size may make smaller.
        bounds = {"inputs": ("vocab_size", self.model.vocab_size),
                  "targets": (self.model.target_vocab_field, self.model.target_vocab_size)}
        for key, (field, size) in bounds.items():
            tokens = np.asarray(batch[key])
            if tokens.ndim != 2:
                raise ValueError(f"{where}: {key} must be [batch, length]; got {tokens.shape}")
            if tokens.size and (tokens.min() < 0 or tokens.max() >= size):
                raise ValueError(
                    f"{where}: {key} token ids must be in [0, {field}={size}) "
                    f"(config.model.{field}); got values in [{tokens.min()}, {tokens.max()}]"
                )

    def dummy_batch(self, batch_size: int) -> Batch:
        shape = (batch_size, self.max_length)
        batch = {"inputs": np.ones(shape, np.int32), "targets": np.ones(shape, np.int32)}
        if self.config.get("pack_examples", False):
            for key in ("inputs", "targets"):
                batch[f"{key}_segment_ids"] = np.ones(shape, np.int32)
                batch[f"{key}_positions"] = np.zeros(shape, np.int32)
        return batch

    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        return self.model.init({"params": rng}, batch["inputs"], batch["targets"])["params"]

    def _token_losses(self, logits: jax.Array, targets: jax.Array,
                      label_smoothing: float) -> jax.Array:
        onehot = jax.nn.one_hot(targets, self.model.target_vocab_size)
        return common.smoothed_cross_entropy(logits, onehot, label_smoothing)

    def loss(self, params: Any, batch: Batch, rng: jax.Array,
             frozen: Any) -> tuple[jax.Array, Metrics]:
        """Mean label-smoothed cross-entropy over the non-padding target tokens (no
        normalising constant: see the class docstring) and the token accuracy."""
        logits = self.model.apply({"params": params}, batch["inputs"], batch["targets"],
                                  train=True, rngs={"dropout": rng}, **_packing(batch))
        weights = (batch["targets"] > 0).astype(jnp.float32)
        losses = self._token_losses(logits, batch["targets"],
                                    self.config.get("label_smoothing", 0.0))
        tokens = jnp.maximum(self.loss_weight(batch), 1.0)
        loss = jnp.sum(losses * weights) / tokens
        correct = (predictions(logits) == batch["targets"]) * weights
        return loss, {"token_accuracy": jnp.sum(correct) / tokens}

    def loss_weight(self, batch: Batch) -> jax.Array:
        """The number of non-padding target tokens (what ``loss`` averages over)."""
        return jnp.sum(batch["targets"] > 0).astype(jnp.float32)

    def eval_sums(self, params: Any, batch: Batch, frozen: Any) -> Metrics:
        targets = batch["targets"]
        logits = self.model.apply({"params": params}, batch["inputs"], targets, train=False)
        weights = (targets > 0) & (batch["mask"][:, None] > 0)
        correct = predictions(logits) == targets
        losses = self._token_losses(logits, targets, 0.0)
        exact = jnp.all(correct | (targets == 0), axis=-1)
        return {
            "loss": masked_sum(losses, weights),
            "token_accuracy": masked_sum(correct, weights),
            "exact_match": masked_sum(exact, batch["mask"]),
        }
