import numpy as np
import pytest

from input_pipeline.text import (
    EOS_ID,
    DropLongerThan,
    SentencePieceTokenizer,
    TokenizeTranslation,
    bucket_by_length,
    pad_to_length,
    train_sentencepiece,
)

CORPUS = [f"the {adj} cat sat on the {noun} number {i}" for i, (adj, noun) in enumerate(
    [("big", "mat"), ("small", "chair"), ("red", "table"), ("old", "sofa")] * 30)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("spm") / "vocab.model")
    return SentencePieceTokenizer(train_sentencepiece(CORPUS, 60, path))


def test_sentencepiece_round_trip_and_special_ids(tokenizer):
    ids = tokenizer.encode("the red cat sat on the sofa")
    assert ids and 0 not in ids and EOS_ID not in ids
    assert tokenizer.decode(ids + [EOS_ID, 7, 8]) == "the red cat sat on the sofa"
    assert tokenizer.processor.pad_id() == 0 and tokenizer.processor.eos_id() == 1


def test_unknown_characters_do_not_crash(tokenizer):
    ids = tokenizer.encode("the ☃ cat")
    assert 2 in ids  # UNK
    assert isinstance(tokenizer.decode(ids), str)


def test_pad_to_length_truncates_and_keeps_eos():
    np.testing.assert_array_equal(pad_to_length([5, 6], 5), [5, 6, EOS_ID, 0, 0])
    np.testing.assert_array_equal(pad_to_length(range(3, 10), 4), [3, 4, 5, EOS_ID])


def test_tokenize_translation(tokenizer):
    out = TokenizeTranslation(tokenizer, "en", "de", 12).map({"en": b"the cat", "de": "the mat"})
    assert out["inputs"].shape == (12,) and out["inputs"].dtype == np.int32
    assert tokenizer.decode(out["targets"]) == "the mat"


def test_overlong_training_pairs_are_dropped_not_cut(tokenizer):
    """Evaluation truncates a side longer than max_length (EOS kept last); training keeps it
    whole, and DropLongerThan removes it, as Flax's WMT example does. A pair that fits exactly
    (max_length tokens with its EOS) is kept, padded as evaluation pads it."""
    fits, long = "the big cat sat on the mat", "the big cat sat on the mat " * 3
    length = len(tokenizer.encode(fits)) + 1  # EOS included
    train = TokenizeTranslation(tokenizer, "en", "de", length, truncate=False)
    evaluate = TokenizeTranslation(tokenizer, "en", "de", length)
    keep = DropLongerThan(length)
    for source, target in ((long, fits), (fits, long)):  # either side too long
        example = train.map({"en": source, "de": target})
        assert not keep.filter(example)
        cut = evaluate.map({"en": source, "de": target})
        assert cut["inputs"].shape == cut["targets"].shape == (length,)
        assert cut["inputs"][-1] == cut["targets"][-1] == EOS_ID
    exact = train.map({"en": fits, "de": fits})
    assert keep.filter(exact)
    for key in ("inputs", "targets"):
        np.testing.assert_array_equal(exact[key], evaluate.map({"en": fits, "de": fits})[key])
    shorter = TokenizeTranslation(tokenizer, "en", "de", length + 4, truncate=False)
    padded = shorter.map({"en": fits, "de": "the mat"})
    assert padded["inputs"].shape == (length + 4,) and DropLongerThan(length).filter(padded)
    assert not DropLongerThan(length - 1).filter(padded)


class _FixedTokenizer:
    """``encode`` returns the text's characters as ids 3, 4, ...: lengths by hand."""

    def encode(self, text):
        return [3 + i for i in range(len(text))]


def test_a_side_of_max_length_tokens_has_no_room_for_eos_and_is_dropped():
    """max_length=4: three tokens and EOS fit and are kept, padded; four tokens need five
    with EOS, so training returns all five for DropLongerThan to remove (cut to four with EOS
    last, they would teach the model to stop mid-sentence)."""
    train = TokenizeTranslation(_FixedTokenizer(), "en", "de", 4, truncate=False)
    fits = train.map({"en": "abc", "de": "ab"})
    np.testing.assert_array_equal(fits["inputs"], [3, 4, 5, EOS_ID])
    np.testing.assert_array_equal(fits["targets"], [3, 4, EOS_ID, 0])
    assert DropLongerThan(4).filter(fits)
    long = train.map({"en": "abcd", "de": "ab"})
    np.testing.assert_array_equal(long["inputs"], [3, 4, 5, 6, EOS_ID])
    assert not DropLongerThan(4).filter(long)


def test_pad_to_length_without_eos_keeps_length_tokens():
    np.testing.assert_array_equal(pad_to_length([5, 6, 7], 3, append_eos=False), [5, 6, 7])
    np.testing.assert_array_equal(pad_to_length([5], 3, append_eos=False), [5, 0, 0])


def test_length_buckets_group_similar_lengths():
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(40):
        n = int(rng.integers(1, 12))
        row = np.zeros(12, np.int32)
        row[:n] = 5
        examples.append({"inputs": row})
    boundaries, sizes = [4, 8, 12], [8, 4, 2]
    batches = list(bucket_by_length(examples, boundaries, sizes))
    assert sum(len(b["inputs"]) for b in batches) == 40
    full = {width: 0 for width in boundaries}
    for batch in batches:
        width = batch["inputs"].shape[1]
        assert width in boundaries  # trimmed to its bucket's boundary
        # Every row belongs to this bucket: longer than the boundary below, within this one.
        lower = ([0] + boundaries)[boundaries.index(width)]
        lengths = np.count_nonzero(batch["inputs"], axis=1)
        assert np.all((lengths > lower) & (lengths <= width)), (width, lengths)
        assert len(lengths) <= sizes[boundaries.index(width)]
        full[width] += len(lengths) == sizes[boundaries.index(width)]
    assert all(full.values()), full  # every bucket filled a whole batch: several widths
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        list(bucket_by_length(examples, [4], [2]))


def test_tokenize_sentences_pads_and_truncates_to_a_fixed_length():
    import os

    from input_pipeline.text import TokenizeSentences
    from transformer import pretrained

    try:
        model_dir = pretrained.minilm_model_dir()
    except FileNotFoundError:
        pytest.skip(pretrained.MINILM_INSTALL)
    transform = TokenizeSentences(os.path.join(model_dir, "tokenizer.json"), max_length=8)
    short = transform.map({"text": "Hello world."})
    assert short["input_ids"].tolist()[:5] == [101, 7592, 2088, 1012, 102]  # [CLS] ... [SEP]
    assert short["attention_mask"].tolist() == [1] * 5 + [0] * 3
    long = transform.map({"text": b"one two three four five six seven eight nine ten"})
    assert long["attention_mask"].all() and long["input_ids"][-1] == 102
    assert long["input_ids"].dtype == np.int32 and long["input_ids"].shape == (8,)


def test_length_buckets_fit_the_longest_key_so_no_token_is_cut():
    """Targets longer than their inputs (translation often has them) keep every token and
    their EOS: the bucket is chosen by the longer of the two."""
    rng = np.random.default_rng(1)
    examples = [{"inputs": pad_to_length([5] * int(rng.integers(1, 4)), 16),
                 "targets": pad_to_length(list(range(3, 3 + int(rng.integers(1, 15)))), 16)}
                for _ in range(30)]
    batches = list(bucket_by_length(examples, [4, 8, 16], [4, 4, 4]))
    assert sum(len(b["targets"]) for b in batches) == 30
    kept = sorted(tuple(row[row > 0]) for b in batches for row in b["targets"])
    assert kept == sorted(tuple(e["targets"][e["targets"] > 0]) for e in examples)
    assert all(EOS_ID in row for b in batches for row in b["targets"])
    assert any(b["targets"].shape[1] == 16 for b in batches)
