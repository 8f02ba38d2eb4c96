"""Offline synthetic sequence-to-sequence tasks: copy, reverse, sort and addition.

Tokens: ``PAD = 0``, ``EOS = 1``, content tokens ``2 .. vocab_size - 1``. Every example is a
dict with ``inputs`` and ``targets``, int32 ``[max_len + 1]``: the sequence, ``EOS``, then
padding. Examples are a deterministic function of ``(seed, index)``; the held-out split is
disjoint from training: an example belongs to the test split only if a hash of its input
sequence falls in the test bucket, so no test input is ever a training input.
"""

from __future__ import annotations

import hashlib

import numpy as np

PAD, EOS, FIRST_CONTENT_TOKEN = 0, 1, 2
SYNTHETIC_TASKS = ("copy", "reverse", "sort", "addition")
SPLITS = ("train", "test")
TEST_BUCKETS = 10  # 1 bucket in 10 is held out


def _in_test_split(sequence: np.ndarray) -> bool:
    digest = hashlib.blake2b(np.asarray(sequence, np.int32).tobytes(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % TEST_BUCKETS == 0


def _digits_to_tokens(number: int) -> list[int]:
    return [FIRST_CONTENT_TOKEN + int(d) for d in str(number)]


class Seq2SeqTaskSource:
    """A grain random-access source of one synthetic task's split.

    Args:
      task: one of ``SYNTHETIC_TASKS``.
      split: ``"train"`` or ``"test"``.
      num_examples: examples in this split.
      min_len / max_len: content length range (for ``addition``: digits per operand, and
        ``max_len`` bounds the whole ``a + b`` input).
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
        self.task, self.split, self.num_examples = task, split, num_examples
        self.min_len, self.max_len, self.vocab_size, self.seed = (
            min_len, max_len, vocab_size, seed)
        self.length = max_len + 2  # room for the sum's carry digit and EOS

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (f"Seq2SeqTaskSource(task={self.task!r}, split={self.split!r}, "
                f"num_examples={self.num_examples})")

    def _sample(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        if self.task == "addition":
            max_digits = min((self.max_len - 1) // 2, 9)  # 'a+b' fits in max_len
            digits_a = int(rng.integers(1, max_digits + 1))
            digits_b = int(rng.integers(1, max_digits + 1))
            a = int(rng.integers(0, 10 ** digits_a))
            b = int(rng.integers(0, 10 ** digits_b))
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
        while True:
            inputs, targets = self._sample(rng)
            if _in_test_split(np.array(inputs)) == want_test:
                return {"inputs": self._pad(inputs), "targets": self._pad(targets)}
