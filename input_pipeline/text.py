"""Text: sentencepiece and HF ``tokenizers`` vocabularies, padding, length buckets.

Packing several examples per row is grain's ``FirstFitPackIterDataset``, used by
``input_pipeline.loader.make_train_loader(pack_length=...)``.

Token conventions match ``transformer``: ``PAD = 0``, ``EOS = 1``. Sentencepiece models are
trained with those ids (``pad_id=0, eos_id=1, unk_id=2``, no BOS). Flax's WMT example trains
with sentencepiece's defaults instead (``unk_id=0, bos_id=1, eos_id=2``, its ``EOS_ID = 2``)
and pads with 0, the id of its unknown token; here padding and ``<unk>`` are told apart.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


# ----------------------------------------------------------------------------- vocabularies
def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_path: str, *,
                        max_sentences: int = 1_000_000, character_coverage: float = 1.0,
                        model_type: str = "unigram") -> str:
    """Trains a sentencepiece model on ``texts``; writes ``model_path`` (+ ``.vocab``)."""
    import sentencepiece as spm

    if vocab_size < 4:
        raise ValueError(f"vocab_size={vocab_size} must be >= 4")
    os.makedirs(os.path.dirname(os.path.abspath(model_path)) or ".", exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        count = 0
        for text in texts:
            line = text.decode("utf-8") if isinstance(text, bytes) else str(text)
            line = line.replace("\n", " ").strip()
            if line:
                f.write(line + "\n")
                count += 1
            if count >= max_sentences:
                break
        corpus = f.name
    if count == 0:
        raise ValueError("train_sentencepiece got no non-empty text")
    prefix = model_path[:-6] if model_path.endswith(".model") else model_path
    try:
        spm.SentencePieceTrainer.train(
            input=corpus, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID,
            bos_id=-1, hard_vocab_limit=False, minloglevel=2)
    finally:
        os.unlink(corpus)
    if prefix + ".model" != model_path:
        os.replace(prefix + ".model", model_path)
    return model_path


class SentencePieceTokenizer:
    """``encode(text) -> ids`` (no EOS) and ``decode(ids) -> text`` (stops at EOS)."""

    def __init__(self, model_path: str) -> None:
        import sentencepiece as spm

        if not os.path.exists(model_path):
            raise FileNotFoundError(f"sentencepiece model {model_path!r} does not exist")
        self.model_path = model_path
        self.processor = spm.SentencePieceProcessor(model_file=model_path)
        self.vocab_size = self.processor.get_piece_size()

    def encode(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.processor.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if EOS_ID in ids:
            ids = ids[: ids.index(EOS_ID)]
        # A model's vocabulary may be padded beyond the tokenizer's: such ids decode to nothing.
        return self.processor.decode([i for i in ids if PAD_ID < i < self.vocab_size])


def load_hf_tokenizer(tokenizer_json: str) -> Any:
    """A HuggingFace ``tokenizers.Tokenizer`` from its ``tokenizer.json``."""
    from tokenizers import Tokenizer

    if not os.path.exists(tokenizer_json):
        raise FileNotFoundError(f"tokenizer file {tokenizer_json!r} does not exist")
    return Tokenizer.from_file(tokenizer_json)


# ----------------------------------------------------------------------------- lengths
def pad_to_length(ids: Sequence[int], length: int, *, append_eos: bool = True) -> np.ndarray:
    """``ids`` (+ EOS), truncated to ``length`` (EOS kept last) and zero-padded: int32."""
    ids = list(ids)[: length - 1 if append_eos else length]
    if append_eos:
        ids.append(EOS_ID)
    out = np.zeros((length,), np.int32)
    out[: len(ids)] = ids
    return out


class TokenizeTranslation(grain.transforms.Map):
    """``{source_key: text, target_key: text}`` -> ``{"inputs", "targets"}``, int32
    ``[max_length]`` each, EOS-terminated and zero-padded.

    A side longer than ``max_length`` (EOS included) is truncated, its EOS kept last
    (``truncate=True``: evaluation, which must keep every example). With ``truncate=False`` it
    is returned whole instead, ``len(ids) + 1`` tokens, for ``DropLongerThan`` to remove:
    training on a cut sentence ended by EOS would teach the model to stop mid-sentence, so
    Flax's WMT example drops such training pairs.
    """

    def __init__(self, tokenizer: SentencePieceTokenizer, source_key: str, target_key: str,
                 max_length: int, *, truncate: bool = True) -> None:
        self.tokenizer, self.source_key, self.target_key = tokenizer, source_key, target_key
        self.max_length, self.truncate = max_length, truncate

    def _ids(self, text: str | bytes) -> np.ndarray:
        ids = self.tokenizer.encode(text)
        if not self.truncate and len(ids) + 1 > self.max_length:
            return np.asarray([*ids, EOS_ID], np.int32)
        return pad_to_length(ids, self.max_length)

    def map(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"inputs": self._ids(example[self.source_key]),
                "targets": self._ids(example[self.target_key])}


class DropLongerThan(grain.transforms.Filter):
    """Keeps an example only if each of ``keys`` holds at most ``max_length`` tokens up to its
    last non-padding one (EOS included), as Flax's WMT example's ``length_filter`` does."""

    def __init__(self, max_length: int, keys: Sequence[str] = ("inputs", "targets"),
                 setting: str = "max_length") -> None:
        # ``setting``: the config field that sets ``max_length``, named when nothing fits.
        self.max_length, self.keys, self.setting = max_length, tuple(keys), setting

    def __repr__(self) -> str:
        return f"DropLongerThan(max_length={self.max_length}, keys={self.keys})"

    @property
    def rejection_hint(self) -> str:
        return (f"each of {list(self.keys)} must hold at most {self.max_length} tokens, EOS "
                f"included; raise {self.setting}={self.max_length} or check the tokenizer")

    def filter(self, example: dict[str, np.ndarray]) -> bool:
        # Trailing zeros are padding: a zero-padded [max_length] array that fits is kept.
        return all(len(np.trim_zeros(np.asarray(example[key]), "b")) <= self.max_length
                   for key in self.keys)


def bucket_by_length(examples: Iterable[dict[str, np.ndarray]], bucket_boundaries: Sequence[int],
                     batch_sizes: Sequence[int]) -> Iterator[dict[str, np.ndarray]]:
    """Batches examples of similar length together, each bucket trimmed to its boundary.

    An example's length is that of its longest sequence (every key, e.g. ``inputs`` and
    ``targets``, zero-padded at the end): every key of a batch is trimmed to the bucket's
    boundary, so a bucket chosen by one key alone would cut a longer other key, its EOS
    included. ``batch_sizes[i]`` examples of length ``<= bucket_boundaries[i]`` form one batch
    (pick sizes so that every bucket holds about the same number of tokens: batching by token
    count). Partial buckets are flushed at the end.
    """
    if len(batch_sizes) != len(bucket_boundaries):
        raise ValueError("bucket_by_length needs one batch size per bucket boundary; got "
                         f"{len(batch_sizes)} sizes for {len(bucket_boundaries)} boundaries")
    buckets: list[list[dict[str, np.ndarray]]] = [[] for _ in bucket_boundaries]

    def emit(index):
        bound = bucket_boundaries[index]
        batch = {k: np.stack([np.asarray(e[k])[:bound] for e in buckets[index]])
                 for k in buckets[index][0]}
        buckets[index] = []
        return batch

    for example in examples:
        # Up to the last non-padding token: a PAD inside a sequence must not shorten it.
        length = max(len(np.trim_zeros(np.asarray(v), "b")) for v in example.values())
        index = next((i for i, b in enumerate(bucket_boundaries) if length <= b), None)
        if index is None:
            raise ValueError(f"an example of length {length} exceeds the largest bucket "
                             f"boundary {bucket_boundaries[-1]}")
        buckets[index].append(example)
        if len(buckets[index]) == batch_sizes[index]:
            yield emit(index)
    for index in range(len(buckets)):
        if buckets[index]:
            yield emit(index)


def load_or_train_sentencepiece(model_path: str, source: Any, keys: Sequence[str],
                                vocab_size: int, max_sentences: int = 1_000_000
                                ) -> SentencePieceTokenizer:
    """The tokenizer at ``model_path``; trained first on ``source``'s ``keys`` texts (one shared
    vocabulary, as in the paper) when the file does not exist yet."""
    if not os.path.exists(model_path):
        def texts():
            for index in range(min(len(source), max_sentences)):
                example = source[index]
                for key in keys:
                    yield example[key]

        train_sentencepiece(texts(), vocab_size, model_path, max_sentences=max_sentences)
    return SentencePieceTokenizer(model_path)


class TokenizeSentences(grain.transforms.Map):
    """``{"text": str}`` -> BERT inputs ``input_ids`` and ``attention_mask``, int32
    ``[max_length]``: ``[CLS] ... [SEP]`` from a ``tokenizer.json`` (WordPiece), truncated and
    zero-padded to a fixed length so every batch has one shape (one compilation)."""

    def __init__(self, tokenizer_json: str, max_length: int, text_key: str = "text") -> None:
        if max_length < 2:
            raise ValueError(f"max_length={max_length}: expected >= 2 ([CLS] and [SEP])")
        self.tokenizer_json, self.max_length, self.text_key = tokenizer_json, max_length, text_key
        self._tokenizer = None

    def map(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        if self._tokenizer is None:  # loaded lazily: the transform is pickled to workers
            tokenizer = load_hf_tokenizer(self.tokenizer_json)
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=self.max_length)
            self._tokenizer = tokenizer  # set when configured: grain maps in threads
        text = example[self.text_key]
        ids = self._tokenizer.encode(text.decode() if isinstance(text, bytes) else text).ids
        out = {"input_ids": np.zeros((self.max_length,), np.int32),
               "attention_mask": np.zeros((self.max_length,), np.int32)}
        out["input_ids"][: len(ids)] = ids
        out["attention_mask"][: len(ids)] = 1
        return out
