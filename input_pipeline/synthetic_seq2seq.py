"""Offline synthetic sequence-to-sequence tasks: copy, reverse, sort and addition.

Tokens: ``PAD = 0``, ``EOS = 1``, content tokens ``2 .. vocab_size - 1``. Every example is a
dict with ``inputs`` and ``targets``, int32 ``[max_len + 2]``: the sequence, ``EOS``, then
padding (one position more than ``max_len`` + EOS: room for a sum's carry digit). Examples are
a deterministic function of ``(seed, index)``; the held-out split is disjoint from training:
an example belongs to the test split only if a hash of its input sequence falls in the test
bucket, so no test input is ever a training input.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math

import numpy as np

PAD, EOS, FIRST_CONTENT_TOKEN = 0, 1, 2
SYNTHETIC_TASKS = ("copy", "reverse", "sort", "addition")
SPLITS = ("train", "test")
TEST_BUCKETS = 10  # 1 bucket in 10 is held out
# Inputs of one length (one pair of operand digit counts for addition) hashed one by one to
# find the test split's share; more than this many share it as the hash does, 1 in 10.
ENUMERATION_LIMIT = 4096


def _in_test_split(sequence: np.ndarray) -> bool:
    digest = hashlib.blake2b(np.asarray(sequence, np.int32).tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % TEST_BUCKETS == 0


def _digits_to_tokens(number: int) -> list[int]:
    return [FIRST_CONTENT_TOKEN + int(d) for d in str(number)]


def _max_digits(max_len: int) -> int:
    return min((max_len - 1) // 2, 9)  # 'a+b' fits in max_len


def _smallest_operand(min_len: int) -> int:
    return 0 if min_len == 1 else 10 ** (min_len - 1)


def _strata(task: str, min_len: int, max_len: int, vocab_size: int):
    """``(count, inputs)`` for each stratum of ``Seq2SeqTaskSource._sample``, which picks a
    stratum uniformly (a length; for addition, each operand's largest digit count) and then an
    input uniformly within it; ``inputs`` is a callable iterating over the stratum's inputs."""
    if task == "addition":
        plus = FIRST_CONTENT_TOKEN + 10
        low = _smallest_operand(min_len)
        digit_counts = range(min_len, _max_digits(max_len) + 1)
        for digits_a, digits_b in itertools.product(digit_counts, repeat=2):
            yield ((10 ** digits_a - low) * (10 ** digits_b - low),
                   lambda da=digits_a, db=digits_b: (
                       _digits_to_tokens(a) + [plus] + _digits_to_tokens(b)
                       for a in range(low, 10 ** da) for b in range(low, 10 ** db)))
        return
    symbols = range(FIRST_CONTENT_TOKEN, vocab_size)
    for length in range(min_len, max_len + 1):
        yield len(symbols) ** length, lambda n=length: itertools.product(symbols, repeat=n)


@functools.cache
def _test_share(task: str, min_len: int, max_len: int, vocab_size: int) -> float:
    """The probability that one draw of ``Seq2SeqTaskSource._sample`` is a test input.

    Small strata are hashed input by input, so that a setting with no input in a split (a
    tiny vocabulary and one short length) is refused when the source is built, instead of
    sampling forever when it is read; larger ones hold out the hash's share.
    """
    shares = [sum(_in_test_split(np.array(x)) for x in inputs()) / count
              if count <= ENUMERATION_LIMIT else 1 / TEST_BUCKETS
              for count, inputs in _strata(task, min_len, max_len, vocab_size)]
    return float(np.mean(shares))


class Seq2SeqTaskSource:
    """A grain random-access source of one synthetic task's split.

    Args:
      task: one of ``SYNTHETIC_TASKS``.
      split: ``"train"`` or ``"test"``.
      num_examples: examples in this split.
      min_len / max_len: content length range. For ``addition``, ``max_len`` bounds the whole
        ``a+b`` input and each operand has ``min_len`` to ``(max_len - 1) // 2`` digits (at
        most 9): a largest digit count is drawn uniformly, then a number below it with at
        least ``min_len`` digits (``min_len=1`` includes 0).
      vocab_size: tokens ``0 .. vocab_size - 1``; ``addition`` needs at least 13 (10 digits,
        ``+``, PAD, EOS).
      seed: generator seed; example ``i`` is the same for every call.
    """

    def __init__(self, task: str, split: str = "train", num_examples: int = 10_000,
                 min_len: int = 2, max_len: int = 10, vocab_size: int = 16,
                 seed: int = 0) -> None:
        if task not in SYNTHETIC_TASKS:
            raise ValueError(f"task={task!r} is unknown; expected one of {SYNTHETIC_TASKS}")
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; expected one of {SPLITS}")
        if num_examples < 1:
            raise ValueError(f"num_examples={num_examples} must be >= 1")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"min_len={min_len} and max_len={max_len} must satisfy "
                             "1 <= min_len <= max_len")
        minimum_vocab = 13 if task == "addition" else FIRST_CONTENT_TOKEN + 2
        if vocab_size < minimum_vocab:
            raise ValueError(f"vocab_size={vocab_size} is too small for task {task!r}; "
                             f"expected >= {minimum_vocab}")
        if task == "addition" and max_len < 3:
            raise ValueError(f"max_len={max_len} must be >= 3 for addition ('a+b')")
        if task == "addition" and min_len > _max_digits(max_len):
            raise ValueError(
                f"min_len={min_len} digits per operand is more than max_len={max_len} allows "
                f"for addition: expected min_len <= {_max_digits(max_len)} ('a+b' fits in "
                "max_len: (max_len - 1) // 2 digits, at most 9)")
        self.task, self.split, self.num_examples = task, split, num_examples
        self.min_len, self.max_len, self.vocab_size, self.seed = (
            min_len, max_len, vocab_size, seed)
        self.length = max_len + 2  # room for the sum's carry digit and EOS
        share = _test_share(task, min_len, max_len, vocab_size)
        share = share if split == "test" else 1 - share
        if share == 0:
            raise ValueError(f"no input of task {task!r} with min_len={min_len}, "
                             f"max_len={max_len}, vocab_size={vocab_size} falls in the "
                             f"{split!r} split (1 input in {TEST_BUCKETS} is held out by a "
                             "hash): widen the lengths or the vocabulary")
        # Rejection sampling below: the chance that this many draws all miss is < e^-60.
        self._max_draws = math.ceil(60 / share)

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (f"Seq2SeqTaskSource(task={self.task!r}, split={self.split!r}, "
                f"num_examples={self.num_examples})")

    def _sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        if self.task == "addition":
            max_digits = _max_digits(self.max_len)
            digits_a = int(rng.integers(self.min_len, max_digits + 1))
            digits_b = int(rng.integers(self.min_len, max_digits + 1))
            low = _smallest_operand(self.min_len)
            a = int(rng.integers(low, 10 ** digits_a))
            b = int(rng.integers(low, 10 ** digits_b))
            plus = FIRST_CONTENT_TOKEN + 10
            return _digits_to_tokens(a) + [plus] + _digits_to_tokens(b), _digits_to_tokens(a + b)
        length = int(rng.integers(self.min_len, self.max_len + 1))
        sequence = rng.integers(FIRST_CONTENT_TOKEN, self.vocab_size, size=length).tolist()
        if self.task == "copy":
            return sequence, list(sequence)
        if self.task == "reverse":
            return sequence, sequence[::-1]
        return sequence, sorted(sequence)

    def _pad(self, tokens: list[int]) -> np.ndarray:
        out = np.zeros((self.length,), np.int32)
        out[: len(tokens)] = tokens
        out[len(tokens)] = EOS
        return out

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self!r}")
        # Draw candidates from the example's own stream until one lands in this split.
        rng = np.random.default_rng([self.seed, SYNTHETIC_TASKS.index(self.task), index])
        want_test = self.split == "test"
        for _ in range(self._max_draws):
            inputs, targets = self._sample(rng)
            if _in_test_split(np.array(inputs)) == want_test:
                return {"inputs": self._pad(inputs), "targets": self._pad(targets)}
        raise ValueError(f"example {index} of the {self.split!r} split: no input of "
                         f"{self._max_draws} drawn falls in it (task={self.task!r}, min_len="
                         f"{self.min_len}, max_len={self.max_len}, vocab_size="
                         f"{self.vocab_size}): widen the lengths or the vocabulary")
