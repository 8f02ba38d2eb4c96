"""The offline stdlib-docstring corpus: sentences, a content-disjoint held-out split."""

import os
import textwrap

import pytest

from input_pipeline import get_source
from input_pipeline.docstrings import (
    DocstringSentences,
    in_test_split,
    split_sentences,
    stdlib_sentences,
)


def test_split_sentences_keeps_prose_and_drops_code():
    doc = textwrap.dedent("""\
        Return the number of items in the queue, or zero when it is empty.
        This value is only approximate in threaded programs.

        >>> q.qsize() + 1 + 2 + 3 + 4
        Short one.
        """)
    assert split_sentences(doc) == [
        "Return the number of items in the queue, or zero when it is empty.",
        "This value is only approximate in threaded programs."]


def test_corpus_is_deterministic_and_splits_are_disjoint(tmp_path):
    package = tmp_path / "lib"
    (package / "tests").mkdir(parents=True)
    (package / "mod.py").write_text(textwrap.dedent('''\
        """A module docstring that is long enough to be kept here. It has two sentences."""

        def f():
            """Compute the answer to the question of life and everything else."""

        class C:
            """A class whose docstring also says something about itself."""
        '''))
    (package / "tests" / "test_mod.py").write_text('"""Tests are skipped by the corpus reader."""')
    sentences = stdlib_sentences(str(package))
    assert sentences == tuple(sorted(set(sentences)))
    assert "A class whose docstring also says something about itself." in sentences
    assert not any("Tests are skipped" in s for s in sentences)
    train = DocstringSentences("train", stdlib_dir=str(package)).sentences
    test = DocstringSentences("test", stdlib_dir=str(package)).sentences
    assert sorted(train + test) == list(sentences) and not set(train) & set(test)
    assert all(in_test_split(s) for s in test)


@pytest.mark.slow
def test_real_stdlib_corpus_has_thousands_of_sentences():
    train, test = get_source("stdlib_docstrings", "train"), get_source("stdlib_docstrings",
                                                                        "test")
    assert len(train) > 5000 and len(test) > 500
    assert isinstance(train[0]["text"], str)
    assert len(get_source("stdlib_docstrings", "test", max_examples=50)) == 50


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="split='validation'"):
        DocstringSentences("validation")
    with pytest.raises(ValueError, match="max_examples=-1"):
        DocstringSentences("train", max_examples=-1)
    with pytest.raises(FileNotFoundError, match="stdlib_dir"):
        stdlib_sentences(os.path.join(str(tmp_path), "missing"))
