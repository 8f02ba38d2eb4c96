"""An offline English corpus: sentences from the docstrings of the installed Python stdlib.

Every Python installation carries a few hundred thousand words of edited English prose in its
standard library's docstrings; nothing is downloaded. Modules, classes and functions of every
``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (tests, idlelib and site-packages
excluded) are parsed with ``ast`` (no code is imported or run), their docstrings split into
sentences, and sentences of 6 to 40 words with mostly alphabetic content kept, de-duplicated
and sorted, so the corpus is deterministic for a given Python version (it differs slightly
between versions, like their stdlibs).

The held-out split is fixed by content: a sentence is in ``test`` when a hash of its text falls
in 1 of ``TEST_BUCKETS`` buckets, so no test sentence is ever a training sentence.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import re
import sysconfig
import warnings

TEST_BUCKETS = 10
SPLITS = ("train", "test")
MIN_WORDS, MAX_WORDS = 6, 40
_SKIPPED_FOLDERS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3",
                    "__pycache__", "turtledemo"}
# A sentence ends at ., ! or ? followed by white space and an upper-case letter.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def _docstrings(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                tree = ast.parse(f.read(), filename=path)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
        n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return [doc for doc in (ast.get_docstring(n) for n in nodes) if doc]


def _is_prose(sentence: str) -> bool:
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS:
        return False
    letters = sum(c.isalpha() for c in sentence)
    # Mostly words, not code, tables or doctest lines.
    return (letters >= 0.7 * len(sentence.replace(" ", "")) and ">>>" not in sentence
            and "::" not in sentence and sentence[0].isupper())


def split_sentences(text: str) -> list[str]:
    """Sentences of one docstring: paragraphs joined into lines, then split at sentence ends."""
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        sentences.extend(s.strip() for s in _SENTENCE_END.split(flat))
    return [s for s in sentences if _is_prose(s)]


def in_test_split(sentence: str) -> bool:
    digest = hashlib.blake2b(sentence.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "little") % TEST_BUCKETS == 0


@functools.lru_cache(maxsize=4)
def stdlib_sentences(stdlib_dir: str | None = None) -> tuple[str, ...]:
    """All corpus sentences, sorted and unique (a few seconds to build; cached)."""
    root = stdlib_dir or sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"stdlib_dir={root!r} is not a directory")
    found = set()
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if d not in _SKIPPED_FOLDERS)
        for name in sorted(files):
            if name.endswith(".py"):
                for doc in _docstrings(os.path.join(folder, name)):
                    found.update(split_sentences(doc))
    if not found:
        raise ValueError(f"no docstring sentences found under {root!r}")
    return tuple(sorted(found))


class DocstringSentences:
    """A grain random-access source of one split: ``{"text": str}`` per sentence.

    Args:
      split: ``"train"`` or ``"test"`` (disjoint by content, see the module docstring).
      max_examples: keep only the first ``max_examples`` of the split (0: all).
      stdlib_dir: the folder to read (default: this interpreter's stdlib).
    """

    def __init__(self, split: str, max_examples: int = 0, stdlib_dir: str | None = None):
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {SPLITS}")
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) \
                or max_examples < 0:
            raise ValueError(f"max_examples={max_examples!r}: expected an int >= 0")
        held_out = split == "test"
        self.sentences = [s for s in stdlib_sentences(stdlib_dir)
                          if in_test_split(s) == held_out]
        if max_examples:
            self.sentences = self.sentences[:max_examples]

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> dict[str, str]:
        return {"text": self.sentences[index]}
