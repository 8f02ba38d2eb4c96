"""Decode with a trained seq2seq model: one output line per input line.

  python -m trainer.generate --workdir=DIR [--input=FILE] [--strategy=beam --beam_size=4]
      [--average_last=5 | --step=S | --ema]

Loads the run's config (``DIR/config.json``), its newest checkpoint (or, with
``--average_last=N``, the mean of its newest N, as the paper's base model; ``--step`` for
another checkpoint, ``--ema`` for its moving average of the parameters) and, for text
datasets, its sentencepiece vocabulary; reads lines from ``--input`` (default: standard input)
and prints one decoded line per input line. Synthetic-task runs read and write space-separated
token ids. Lines longer than the model's maximum length are truncated with a warning, empty
lines give empty outputs, and unknown characters become the vocabulary's unknown token.
"""

from __future__ import annotations

import numbers
import sys
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from input_pipeline.text import EOS_ID, PAD_ID, SentencePieceTokenizer, pad_to_length
from trainer import evaluate, host_memory
from trainer.tasks.seq2seq import build_transformer
from transformer import decoding

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Workdir of a finished (or running) seq2seq run.")
flags.DEFINE_string("input", None, "File with one source per line (default: stdin).")
flags.DEFINE_enum("strategy", "greedy", list(decoding.STRATEGIES), "Decoding strategy.")
flags.DEFINE_integer("beam_size", 4, "Beams for --strategy=beam.")
flags.DEFINE_float("alpha", 0.6, "GNMT length-penalty exponent for beam search.")
flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
flags.DEFINE_integer("top_k", 0, "Sampling: keep the k most likely tokens (0: all).")
flags.DEFINE_float("top_p", 1.0, "Sampling: nucleus mass.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 32, "Lines decoded together.", lower_bound=1)
flags.DEFINE_integer("max_decode_length", 0, "Output length limit (0: the model's).")
flags.DEFINE_integer("extra_length", None, "Limit each output to its source's length plus "
                     "this many tokens (the paper: 50), within --max_decode_length.",
                     lower_bound=0)
flags.DEFINE_integer("average_last", 1, "Decode with the mean parameters of the run's newest "
                     "N checkpoints (the paper's base model: 5); 1: the newest alone.",
                     lower_bound=1)
flags.DEFINE_integer("step", None, "Decode with the checkpoint of this step (default: the "
                     "newest).")
flags.DEFINE_bool("ema", False, "Decode with the checkpoint's moving average of the parameters "
                  "(the run's config.ema_decay).")


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """A seq2seq run's config (``workdir/config.json``)."""
    config = evaluate.load_run_config(workdir)
    if config.task != "seq2seq":
        raise ValueError(f"{workdir} holds a {config.task!r} run; generate needs a seq2seq run")
    return config


class LineCodec:
    """Lines <-> token ids: sentencepiece for text runs, integers for synthetic tasks."""

    def __init__(self, config: ml_collections.ConfigDict, max_length: int,
                 vocab_size: int) -> None:
        self.max_length, self.vocab_size = max_length, vocab_size
        self.tokenizer = None
        if not config.dataset.name.startswith("synthetic/"):
            self.tokenizer = SentencePieceTokenizer(config.dataset.vocab_path)

    def encode(self, line: str, number: int) -> np.ndarray:
        if self.tokenizer is not None:
            ids = self.tokenizer.encode(line)
        else:
            words = line.split()
            ids = [int(w) for w in words if self._is_id(w)]
            if len(ids) != len(words):
                logging.warning("line %d: dropped tokens that are not ids in [2, %d): %s",
                                number, self.vocab_size,
                                [w for w in words if not self._is_id(w)])
        if len(ids) > self.max_length - 1:
            logging.warning("line %d has %d tokens; truncated to %d", number, len(ids),
                            self.max_length - 1)
        return pad_to_length(ids, self.max_length)

    def _is_id(self, word: str) -> bool:
        # ASCII decimals only: str.isdigit() is also true of '²' (int() raises) and
        # str.isdecimal() of '٣' (int() reads 3), neither of which is a written token id.
        return word.isascii() and word.isdecimal() and 2 <= int(word) < self.vocab_size

    def decode(self, ids: np.ndarray) -> str:
        ids = [int(i) for i in ids]
        if self.tokenizer is not None:
            return self.tokenizer.decode(ids)
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        return " ".join(str(i) for i in ids if i != PAD_ID)


def _batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    batch = []
    for line in lines:
        batch.append(line.rstrip("\n"))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_positive(value, name: str, meaning: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} (--{name}) must be an integer >= 1: {meaning}")


def generate(workdir: str, lines: Iterable[str], **options) -> Iterator[str]:
    """Yields one decoded line per input line (see the module docstring)."""
    batch_size = options.pop("batch_size", 32)
    average_last = options.pop("average_last", 1)
    step, ema = options.pop("step", None), options.pop("ema", False)
    # Checked first, before the checkpoint is restored: a batch size of 0 or less would
    # otherwise end in a numpy broadcasting error when the first batch is padded.
    _check_positive(batch_size, "batch_size", "the number of lines decoded together")
    evaluate.check_checkpoint_choice(step, ema, average_last)
    config = load_run_config(workdir)
    model = build_transformer(config.model, config.model.vocab_size, jnp.float32)
    max_length = model.max_length
    max_decode_length = options.pop("max_decode_length", 0) or max_length
    decoding.check_max_decode_length(max_decode_length, model)  # before the restore
    params, _, _ = evaluate.run_params(workdir, step, ema, average_last)
    codec = LineCodec(config, max_length, config.model.vocab_size)
    seed = options.pop("seed", 0)
    run = jax.jit(lambda p, x, r: decoding.decode(
        model, p, x, max_decode_length=max_decode_length, rng=r, **options))
    number = 0
    for batch in _batches(lines, batch_size):
        encoded = []
        for line in batch:
            number += 1
            encoded.append(codec.encode(line, number) if line.strip() else None)
        real = [e for e in encoded if e is not None]
        outputs = iter([])
        if real:
            # Pad the batch to a fixed size so every call reuses one compilation.
            inputs = np.zeros((batch_size, max_length), np.int32)
            inputs[: len(real)] = np.stack(real)
            tokens = np.asarray(run(params, inputs, jax.random.key(seed + number)))
            outputs = iter(tokens[: len(real)])
        for item in encoded:
            yield "" if item is None else codec.decode(next(outputs))


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    stream = open(FLAGS.input) if FLAGS.input else sys.stdin  # noqa: SIM115
    options = dict(strategy=FLAGS.strategy, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
                   max_decode_length=FLAGS.max_decode_length, average_last=FLAGS.average_last,
                   step=FLAGS.step, ema=FLAGS.ema)
    if FLAGS.extra_length is not None:
        options["extra_length"] = FLAGS.extra_length
    if FLAGS.strategy == "beam":
        options.update(beam_size=FLAGS.beam_size, alpha=FLAGS.alpha)
    if FLAGS.strategy == "sample":
        options.update(temperature=FLAGS.temperature, top_k=FLAGS.top_k, top_p=FLAGS.top_p)
    try:
        for output in generate(FLAGS.workdir, stream, **options):
            print(output, flush=True)
    finally:
        if stream is not sys.stdin:
            stream.close()


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    flags.mark_flag_as_required("workdir")
    app.run(main)
