import numpy as np
import pytest

from input_pipeline import Seq2SeqTaskSource
from input_pipeline.synthetic_seq2seq import EOS, _in_test_split


def _content(tokens):
    tokens = list(tokens)
    return tokens[: tokens.index(EOS)]


@pytest.mark.parametrize("task", ["copy", "reverse", "sort"])
def test_sequence_tasks_are_correct(task):
    source = Seq2SeqTaskSource(task, "train", num_examples=50, min_len=2, max_len=8,
                               vocab_size=12)
    for i in range(50):
        example = source[i]
        inputs, targets = _content(example["inputs"]), _content(example["targets"])
        assert 2 <= len(inputs) <= 8 and all(2 <= t < 12 for t in inputs)
        expected = {"copy": inputs, "reverse": inputs[::-1], "sort": sorted(inputs)}[task]
        assert targets == expected
        assert np.all(example["inputs"][len(inputs) + 1:] == 0)


def test_addition_sums_are_correct():
    source = Seq2SeqTaskSource("addition", "test", num_examples=40, max_len=9, vocab_size=13)
    for i in range(40):
        inputs = _content(source[i]["inputs"])
        plus = inputs.index(12)
        a = int("".join(str(t - 2) for t in inputs[:plus]))
        b = int("".join(str(t - 2) for t in inputs[plus + 1:]))
        total = int("".join(str(t - 2) for t in _content(source[i]["targets"])))
        assert a + b == total


@pytest.mark.parametrize("task", ["reverse", "addition"])
def test_held_out_split_is_disjoint_and_deterministic(task):
    kwargs = dict(num_examples=300, min_len=2, max_len=7, vocab_size=16)
    train = Seq2SeqTaskSource(task, "train", **kwargs)
    test = Seq2SeqTaskSource(task, "test", **kwargs)
    train_inputs = {tuple(train[i]["inputs"]) for i in range(300)}
    test_inputs = {tuple(test[i]["inputs"]) for i in range(300)}
    assert not train_inputs & test_inputs
    assert all(_in_test_split(np.array(_content(t))) for t in test_inputs)
    np.testing.assert_array_equal(test[7]["targets"], Seq2SeqTaskSource(task, "test",
                                                                        **kwargs)[7]["targets"])


@pytest.mark.parametrize("kwargs, field", [
    (dict(task="multiply"), "task"), (dict(task="copy", split="dev"), "split"),
    (dict(task="copy", min_len=5, max_len=3), "min_len"),
    (dict(task="addition", vocab_size=10), "vocab_size"),
    (dict(task="copy", num_examples=0), "num_examples"),
])
def test_invalid_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Seq2SeqTaskSource(**kwargs)


@pytest.mark.parametrize("task, max_len", [("copy", 12), ("addition", 7)])
def test_examples_have_max_len_plus_two_positions(task, max_len):
    """The sequence, EOS and one more position (a sum's carry digit), as documented."""
    source = Seq2SeqTaskSource(task, "train", num_examples=4, min_len=1, max_len=max_len)
    assert source[0]["inputs"].shape == source[0]["targets"].shape == (max_len + 2,)


@pytest.mark.parametrize("min_len, max_len, expected", [(1, 7, {1, 2, 3}), (2, 7, {2, 3}),
                                                        (3, 7, {3}), (2, 9, {2, 3, 4})])
def test_addition_operands_have_min_len_to_max_digits(min_len, max_len, expected):
    source = Seq2SeqTaskSource("addition", "train", num_examples=400, min_len=min_len,
                               max_len=max_len, vocab_size=16)
    digits = set()
    for i in range(400):
        inputs = _content(source[i]["inputs"])
        plus = inputs.index(12)
        digits |= {plus, len(inputs) - plus - 1}
        assert len(inputs) <= max_len
    assert digits == expected


def test_addition_min_len_beyond_what_max_len_allows_is_refused():
    with pytest.raises(ValueError, match=r"min_len=4 .*max_len=7.*expected min_len <= 3"):
        Seq2SeqTaskSource("addition", min_len=4, max_len=7)


@pytest.mark.parametrize("task, split, min_len, max_len, vocab_size", [
    ("copy", "test", 1, 1, 4), ("copy", "test", 1, 1, 6), ("sort", "test", 2, 2, 4),
])
def test_a_split_no_input_can_fall_in_is_refused_when_built(task, split, min_len, max_len,
                                                            vocab_size):
    """These settings have 2-4 possible inputs, none hashed into the held-out bucket: reading
    an example used to sample forever."""
    with pytest.raises(ValueError, match=rf"min_len={min_len}, max_len={max_len}, "
                                         rf"vocab_size={vocab_size} .*'{split}' split"):
        Seq2SeqTaskSource(task, split, num_examples=4, min_len=min_len, max_len=max_len,
                          vocab_size=vocab_size)


def test_sampling_stops_with_an_error_naming_the_settings(monkeypatch):
    """The draws are capped: should a split turn out rarer than estimated, reading fails."""
    source = Seq2SeqTaskSource("copy", "test", num_examples=4, min_len=1, max_len=3,
                               vocab_size=4)
    draws = []

    def never_in_the_test_split(sequence):
        draws.append(1)
        if len(draws) > 100_000:
            raise RuntimeError("still sampling after 100,000 draws")
        return False

    monkeypatch.setattr("input_pipeline.synthetic_seq2seq._in_test_split",
                        never_in_the_test_split)
    with pytest.raises(ValueError, match=r"'test' split.*min_len=1, max_len=3, vocab_size=4"):
        source[0]


def test_small_settings_with_inputs_in_both_splits_still_work():
    """A tiny space with only a few test inputs: every example is found, and is a test one."""
    train = Seq2SeqTaskSource("copy", "train", num_examples=20, min_len=1, max_len=3,
                              vocab_size=4)
    test = Seq2SeqTaskSource("copy", "test", num_examples=20, min_len=1, max_len=3,
                             vocab_size=4)
    assert all(_in_test_split(np.array(_content(test[i]["inputs"]))) for i in range(20))
    assert not any(_in_test_split(np.array(_content(train[i]["inputs"]))) for i in range(20))
