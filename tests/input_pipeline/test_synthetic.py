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
