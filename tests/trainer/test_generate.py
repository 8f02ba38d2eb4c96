"""``python -m trainer.generate``: decode lines with a trained seq2seq run."""

import os
import subprocess
import sys

import pytest

from tests.trainer.launcher import REPO
from tests.trainer.tiny import tiny_seq2seq_config
from trainer.generate import generate
from trainer.train import train_and_evaluate

# Out of the quick subset: every test here needs the module's trained seq2seq model.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seq2seq_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("s2s"))
    train_and_evaluate(tiny_seq2seq_config(), workdir)
    return workdir


def test_one_output_per_line_empty_and_bad_lines_survive(seq2seq_workdir):
    lines = ["3 4 5", "", "9 x 99 7", " ".join(["4"] * 40)]
    outputs = list(generate(seq2seq_workdir, lines, strategy="greedy", batch_size=3))
    assert len(outputs) == 4 and outputs[1] == ""
    for output in outputs:
        assert all(token.isdigit() and 2 <= int(token) < 16 for token in output.split())


@pytest.mark.parametrize("strategy", ["beam", "sample"])
def test_strategies_from_the_command_line(seq2seq_workdir, strategy):
    result = subprocess.run(
        [sys.executable, "-m", "trainer.generate", f"--workdir={seq2seq_workdir}",
         f"--strategy={strategy}", "--beam_size=2", "--top_k=3"],
        input="3 4 5\n\n6 7\n", capture_output=True, text=True, cwd=REPO, timeout=180,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 3 and result.stdout.splitlines()[1] == ""


def test_long_lines_are_truncated_with_a_warning(seq2seq_workdir, caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        list(generate(seq2seq_workdir, [" ".join(["5"] * 50)]))
    assert "truncated" in caplog.text


def test_not_a_seq2seq_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        list(generate(str(tmp_path), ["3"]))
