"""The seq2seq task's config boundary and its BLEU evaluation over several processes."""

import json
import os
import sys

import jax
import numpy as np
import pytest

from tests.multiprocess import run_processes
from tests.trainer.launcher import REPO
from tests.trainer.tiny import tiny_seq2seq_config
from tests.xla_flags import xla_flags
from trainer.tasks import create_task


def test_synthetic_length_defaults_to_the_sources_max_len():
    config = tiny_seq2seq_config()
    del config.dataset.source_kwargs["max_len"]  # the source's default: 10 content tokens
    assert create_task(config).max_length == 10 + 2


class _GivenLogits:
    """Stands in for the Transformer: ``apply`` returns the "parameters", which are logits."""

    def __init__(self, vocab_size):
        self.target_vocab_size = vocab_size

    def apply(self, variables, *args, **kwargs):
        return jax.numpy.asarray(variables["params"])


def test_losses_and_metrics_count_non_padding_tokens_of_real_examples_only():
    """Hand-made logits over 6 tokens, targets [[3, 5, 1, 0], [4, 1, 0, 0], [2, 1, 0, 0]]:
    training averages the smoothed cross-entropy over the 5 non-padding tokens of the first
    two rows; evaluation (third row padding, mask 0) sums the plain cross-entropy over them,
    and a row is an exact match when its non-padding tokens are right, whatever is predicted
    at the padding."""
    task = create_task(tiny_seq2seq_config(label_smoothing=0.1))
    task.model = _GivenLogits(6)
    logits = np.random.default_rng(0).normal(size=(3, 4, 6)).astype(np.float32)
    targets = np.array([[3, 5, 1, 0], [4, 1, 0, 0], [2, 1, 0, 0]], np.int32)
    logits[1, :2] = 0.0
    logits[1, 0, 4] = logits[1, 1, 1] = 5.0  # row 1 right where it counts
    logits[1, 2:, 0] = 9.0  # and "wrong" (PAD, never predicted, then 0-excluded) after
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = (targets > 0) & (np.arange(3) < 2)[:, None]
    smoothed = 0.9 * np.eye(6)[targets] + 0.1 / 6
    want = -np.sum((smoothed * log_softmax).sum(-1) * real) / 5
    two = {"inputs": targets[:2], "targets": targets[:2]}
    loss, _ = task.loss(logits[:2], two, jax.random.key(0), {})
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(task.loss_weight(two), 5)
    sums = task.eval_sums(logits, {"inputs": targets, "targets": targets,
                                   "mask": np.array([1, 1, 0], np.float32)}, {})
    plain = -np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(sums["loss"], [np.sum(plain * real), 5], rtol=1e-5)
    predicted = np.argmax(np.where(np.arange(6) == 0, -np.inf, logits), -1)
    np.testing.assert_allclose(sums["token_accuracy"],
                               [np.sum((predicted == targets) * real), 5])
    row_right = np.all((predicted == targets) | (targets == 0), -1)
    assert row_right[1]
    np.testing.assert_allclose(sums["exact_match"], [np.sum(row_right[:2]), 2])


def test_target_ids_are_checked_against_the_output_vocabulary():
    """A target id the output layer does not have (12 >= output_vocab_size=8, but < the
    source's vocab_size=16) is refused on the host; in the jitted step it gave a NaN loss."""
    config = tiny_seq2seq_config()
    config.model.share_embeddings = False
    config.model.logits_via_embedding = False
    config.model.output_vocab_size = 8
    task = create_task(config)
    batch = {"inputs": np.array([[3, 12, 5, 1]], np.int32),
             "targets": np.array([[7, 5, 3, 1]], np.int32)}
    task.check_batch(batch, "training batch")  # source id 12 < vocab_size=16: fine
    batch["targets"] = np.array([[12, 5, 3, 1]], np.int32)
    with pytest.raises(ValueError, match=r"training batch: targets token ids must be in "
                                         r"\[0, output_vocab_size=8\).*got values in \[1, 12\]"):
        task.check_batch(batch, "training batch")


@pytest.mark.parametrize("output_vocab_size, field", [(None, "vocab_size"),
                                                      (48, "output_vocab_size")])
def test_the_sentencepiece_vocabulary_must_fit_both_sides(monkeypatch, output_vocab_size,
                                                           field):
    """One sentencepiece model tokenises sources and targets, so a 64-token vocabulary is
    refused by a 32-token model, and by a 48-token output layer behind a 64-token source
    vocabulary (that case used to pass, and fail only on the first batch's targets)."""
    import types

    from configs import transformer_wmt14
    from input_pipeline import text
    from trainer.tasks import common

    # Neither WMT nor a trained vocabulary is needed: only the vocabulary's size is read.
    monkeypatch.setattr(common, "data_source", lambda config, split: None)
    monkeypatch.setattr(text, "load_or_train_sentencepiece",
                        lambda *args: types.SimpleNamespace(vocab_size=64))
    config = transformer_wmt14.get_config()
    config.model.name = "micro"
    config.model.vocab_size = 32 if output_vocab_size is None else 64
    if output_vocab_size is not None:
        config.model.share_embeddings = False
        config.model.logits_via_embedding = False
        config.model.output_vocab_size = output_vocab_size
    size = config.model.get("output_vocab_size") or config.model.vocab_size
    with pytest.raises(ValueError, match=rf"has 64 tokens but config.model.{field}={size}"):
        create_task(config).transforms()
    config.model.vocab_size = config.model.output_vocab_size = 64
    assert create_task(config).transforms()  # a vocabulary that fits both: accepted


@pytest.mark.parametrize("strategy", ["sample", "beamsearch"])
def test_unusable_bleu_strategy_fails_when_the_task_is_built(strategy):
    # "sample" needs an rng that generation_metrics does not pass; a typo failed only at the
    # first evaluation.
    with pytest.raises(ValueError, match=rf"config.bleu_strategy='{strategy}' is not "
                                         r"supported; expected one of \('beam', 'greedy'\)"):
        create_task(tiny_seq2seq_config(bleu_strategy=strategy))


def test_teacher_forced_exact_match_equals_greedy_exact_match():
    """Targets that greedy decoding outputs are exact matches under teacher forcing too, also
    when PAD (which decoding never emits) has the largest logit everywhere."""
    import jax
    import jax.numpy as jnp

    from transformer import decoding

    config = tiny_seq2seq_config()
    config.model.share_embeddings = False
    config.model.logits_via_embedding = False
    task = create_task(config)
    source = jnp.array([[3, 4, 5, 6, 1, 0, 0, 0], [7, 8, 9, 1, 0, 0, 0, 0]])
    params = task.init_params(jax.random.key(0), {"inputs": source, "targets": source})
    bias = params["logits_dense"]["bias"]
    params["logits_dense"]["bias"] = bias.at[0].add(50.0)  # PAD's logit dominates
    greedy = decoding.decode(task.model, params, source, max_decode_length=task.max_length,
                             strategy="greedy")
    batch = {"inputs": source, "targets": greedy, "mask": jnp.ones(2)}
    sums = task.eval_sums(params, batch, {})
    # masked_sum gives (sum, count): both examples and every non-pad token are right.
    np.testing.assert_array_equal(sums["exact_match"], [2, 2])
    tokens = int(jnp.sum(greedy > 0))
    np.testing.assert_array_equal(sums["token_accuracy"], [tokens, tokens])
    _, metrics = task.loss(params, batch, jax.random.key(1), {})
    assert float(metrics["token_accuracy"]) == 1.0


def _bleu_over_processes(num_processes: int, devices_per_process: int) -> list[dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(devices_per_process)}
    outputs = run_processes(lambda port: [
        [sys.executable, "-m", "tests.trainer.bleu_worker", str(index), str(num_processes),
         str(port)] for index in range(num_processes)], env=env, cwd=REPO, timeout=300)
    return [json.loads(output.split("BLEU ")[-1]) for output in outputs]


@pytest.mark.slow
def test_bleu_over_two_processes_equals_one_process():
    """Each host decodes its part of the global batch; the hypotheses and references are
    gathered in the same order (before: a ValueError gathering a global array)."""
    from tests.trainer import bleu_worker

    single = bleu_worker.generation_metrics()  # this process, all its devices
    two = _bleu_over_processes(2, 2)
    assert "bleu" in single
    assert two[0] == two[1] == single


@pytest.mark.parametrize("pack", [True, False])
def test_overlong_pairs_are_dropped_from_training_and_kept_in_evaluation(monkeypatch, tmp_path,
                                                                          pack):
    """Training on a pair cut at max_length, EOS put where the sentence does not end, teaches
    the model to stop mid-sentence: such pairs are dropped (packed or not), as in Flax's WMT
    example. Evaluation still sees every pair of the split (truncated)."""
    from configs import transformer_wmt14
    from input_pipeline import text
    from trainer.tasks import common

    short = [f"the {w} cat sat" for w in ("big", "small", "red", "old")]
    overlong = " ".join(["the big cat sat on the mat"] * 4)
    pairs = [{"en": s, "de": s} for s in short * 2 + [overlong] * 4]
    monkeypatch.setattr(common, "data_source", lambda config, split: pairs)
    vocab = text.train_sentencepiece([p["en"] for p in pairs] * 10, 40,
                                     str(tmp_path / "spm.model"))
    config = transformer_wmt14.get_config()
    config.model.name = "micro"
    config.model.vocab_size = config.dataset.vocab_size = 64
    config.model.max_length = config.dataset.max_length = 16
    config.dataset.vocab_path = vocab
    config.batch_size = config.eval_batch_size = 4
    config.pack_examples = pack
    task = create_task(config)
    tokenizer = text.SentencePieceTokenizer(vocab)
    # With EOS, each short sentence fits in 16 tokens and the long one does not.
    assert max(len(tokenizer.encode(s)) for s in short) + 1 <= 16 < len(
        tokenizer.encode(overlong)) + 1
    iterator = iter(task.train_iterator(0, 1))
    trained = []
    for _ in range(4):  # the long pairs are a third of the data: they would show up here
        batch = next(iterator)
        segments = batch.get("targets_segment_ids", (batch["targets"] > 0).astype(int))
        for row, ids in zip(segments, batch["targets"], strict=True):
            trained += [tokenizer.decode(ids[row == s]) for s in range(1, row.max() + 1)]
    assert len(trained) >= 16 and set(trained) == set(short)
    evaluated = list(task.eval_batches(0, 1))
    assert sum(int(b["mask"].sum()) for b in evaluated) == len(pairs)
    # The long pairs are there, cut to 16 tokens with EOS last.
    assert sum(int((b["targets"][:, -1] == text.EOS_ID).sum()) for b in evaluated) == 4


class _LogitsSpy:
    """The task's model, recording the logits of every ``apply``."""

    def __init__(self, model):
        self.model, self.logits = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def apply(self, *args, **kwargs):
        self.logits.append(self.model.apply(*args, **kwargs))
        return self.logits[-1]


def test_a_packed_row_gives_each_example_its_unpacked_loss():
    """Two examples packed in one row (grain's keys: segment ids and positions restarting at 0
    per example) have the token losses they have each in a row of its own, so the task's loss
    is the same too. The inputs (4 and 3 tokens) and targets (3 and 5) have different lengths:
    the inputs' positions taken from the targets' (or none at all) move the second example's
    encoder positions and change its losses."""
    config = tiny_seq2seq_config(pack_examples=True, label_smoothing=0.0)
    config.model.dropout_rate = config.model.attention_dropout_rate = 0.0
    task = create_task(config)
    length = task.max_length
    examples = [([5, 6, 7, 1], [7, 6, 1]), ([3, 4, 1], [9, 8, 10, 11, 1])]

    def row(*sequences):
        return np.array([sum(sequences, []) + [0] * (length - sum(map(len, sequences)))],
                        np.int32)

    unpacked = {key: np.concatenate([row(example[i]) for example in examples])
                for i, key in enumerate(("inputs", "targets"))}
    packed = {}
    for i, key in enumerate(("inputs", "targets")):
        sequences = [example[i] for example in examples]
        packed[key] = row(*sequences)
        packed[f"{key}_segment_ids"] = row(*([n + 1] * len(s) for n, s in enumerate(sequences)))
        packed[f"{key}_positions"] = row(*(list(range(len(s))) for s in sequences))
    assert not np.array_equal(packed["inputs_positions"], packed["targets_positions"])
    # Random values of the initialisers' shapes: compiling the initialisers took seconds.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(leaf.dtype),
                          jax.eval_shape(task.init_params, jax.random.key(0), unpacked))
    task.model = spy = _LogitsSpy(task.model)

    @jax.jit  # one program for both layouts: op by op (or two programs) took seconds
    def losses_and_logits(unpacked, packed):
        return [(task.loss(params, batch, jax.random.key(1), {})[0], spy.logits[-1])
                for batch in (unpacked, packed)]

    (unpacked_loss, unpacked_logits), (packed_loss, packed_logits) = losses_and_logits(
        unpacked, packed)

    def token_losses(logits, targets):
        logits = np.asarray(logits, np.float64)
        log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        return -np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]

    alone = token_losses(unpacked_logits, unpacked["targets"])
    together = token_losses(packed_logits, packed["targets"])[0]
    np.testing.assert_allclose(together[:3], alone[0, :3], rtol=1e-5)
    np.testing.assert_allclose(together[3:8], alone[1, :5], rtol=1e-5)
    np.testing.assert_allclose(packed_loss, unpacked_loss, rtol=1e-5)
