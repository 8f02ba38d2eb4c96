"""``python -m trainer.generate``: decode lines with a trained seq2seq run."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from input_pipeline.text import EOS_ID
from tests.trainer.launcher import REPO
from tests.trainer.tiny import tiny_seq2seq_config
from trainer.generate import FLAGS, LineCodec, generate
from trainer.train import train_and_evaluate

# The tests that take the module's trained seq2seq model are marked slow, out of the quick
# subset; the checks of the input before any model is loaded are not.


@pytest.fixture(scope="module")
def seq2seq_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("s2s"))
    train_and_evaluate(tiny_seq2seq_config(), workdir)
    return workdir


@pytest.mark.slow
def test_one_output_per_line_empty_and_bad_lines_survive(seq2seq_workdir):
    # '²' passes str.isdigit() but not int(): it once ended generate with a ValueError.
    lines = ["3 4 5", "", "9 x \u00b2 99 7", " ".join(["4"] * 40)]
    outputs = list(generate(seq2seq_workdir, lines, strategy="greedy", batch_size=3))
    assert len(outputs) == 4 and outputs[1] == ""
    for output in outputs:
        assert all(token.isdigit() and 2 <= int(token) < 16 for token in output.split())


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["beam", "sample"])
def test_strategies_from_the_command_line(seq2seq_workdir, strategy):
    result = subprocess.run(
        [sys.executable, "-m", "trainer.generate", f"--workdir={seq2seq_workdir}",
         f"--strategy={strategy}", "--beam_size=2", "--top_k=3"],
        input="3 4 5\n\n6 7\n", capture_output=True, text=True, cwd=REPO, timeout=180,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 3 and result.stdout.splitlines()[1] == ""


@pytest.mark.slow
def test_long_lines_are_truncated_with_a_warning(seq2seq_workdir, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        list(generate(seq2seq_workdir, [" ".join(["5"] * 50)]))
    assert "truncated" in caplog.text


def test_not_a_seq2seq_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        list(generate(str(tmp_path), ["3"]))


def test_synthetic_token_ids_are_ascii_decimals_and_the_rest_is_dropped_with_a_warning(caplog):
    """'²' passes str.isdigit() and int() refuses it; '٣' (Arabic-Indic three) passes
    str.isdecimal() and int() reads it as 3: neither is a written id, both are dropped."""
    import logging

    config = ml_collections.ConfigDict({"dataset": {"name": "synthetic/copy"}})
    codec = LineCodec(config, max_length=8, vocab_size=16)
    with caplog.at_level(logging.WARNING):
        encoded = codec.encode("3 \u00b2 \u0663 5 x 99 1", number=7)
    np.testing.assert_array_equal(encoded, [3, 5, EOS_ID, 0, 0, 0, 0, 0])
    dropped = "['\u00b2', '\u0663', 'x', '99', '1']"
    assert f"line 7: dropped tokens that are not ids in [2, 16): {dropped}" in caplog.text


@pytest.mark.parametrize("batch_size", [0, -1])
def test_a_batch_size_below_one_is_refused(tmp_path, batch_size):
    """Before: a numpy broadcasting error when the first batch was padded. The check comes
    before the workdir is read (``tmp_path`` holds no run)."""
    with pytest.raises(ValueError, match=rf"batch_size={batch_size} \(--batch_size\) must be "
                                         "an integer >= 1"):
        list(generate(str(tmp_path), ["3"], batch_size=batch_size))
    with pytest.raises(ValueError, match="not a positive integer"):
        FLAGS["batch_size"].parser.parse(str(batch_size))
