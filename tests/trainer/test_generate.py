"""``python -m trainer.generate``: decode lines with a trained seq2seq run."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from input_pipeline.text import EOS_ID
from tests.trainer.launcher import REPO
from tests.trainer.tiny import tiny_seq2seq_config
from tests.xla_flags import xla_flags
from trainer.generate import FLAGS, LineCodec, generate
from trainer.train import train_and_evaluate

# The tests that take the module's trained seq2seq model are marked slow, out of the quick
# subset; the checks of the input before any model is loaded are not.


# A checkpoint at every step, the newest 3 kept and, at the end, evaluated averaged (the
# paper's average of the last checkpoints): the run holds the checkpoints of steps 2, 3, 4.
AVERAGING = dict(checkpoint_every_steps=1, keep_checkpoints=3, average_last_checkpoints=3)


@pytest.fixture(scope="module")
def seq2seq_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("s2s"))
    train_and_evaluate(tiny_seq2seq_config(**AVERAGING), workdir)
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
         f"--strategy={strategy}", "--beam_size=2", "--top_k=3", "--average_last=2",
         "--extra_length=1"],
        input="3 4 5\n\n6 7\n", capture_output=True, text=True, cwd=REPO, timeout=180,
        env={**os.environ, "XLA_FLAGS": xla_flags(1)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.splitlines()) == 3 and result.stdout.splitlines()[1] == ""
    # --extra_length=1: at most source length (with EOS) + 1 tokens, EOS not printed.
    for source, output in zip(["3 4 5", "6 7"], result.stdout.splitlines()[::2], strict=True):
        assert len(output.split()) <= len(source.split()) + 2


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


@pytest.mark.slow
def test_the_run_evaluates_the_average_of_its_last_checkpoints_at_the_end(seq2seq_workdir):
    """``config.average_last_checkpoints``: the summary and the last metrics record hold the
    evaluation of the mean parameters of steps 2-4, computed here from the checkpoints."""
    import jax

    from trainer import partitioning
    from trainer.checkpointing import average_params, checkpoint_steps
    from trainer.metrics import read_metrics
    from trainer.steps import make_eval_step
    from trainer.tasks import create_task
    from trainer.train import evaluate

    with open(os.path.join(seq2seq_workdir, "summary.json")) as f:
        summary = json.load(f)
    averaged = summary["final_eval_averaged"]
    assert checkpoint_steps(seq2seq_workdir) == [2, 3, 4]
    assert averaged["eval_averaged/num_checkpoints"] == 3
    assert {k: v for k, v in read_metrics(seq2seq_workdir)[-1].items()
            if k.startswith("eval_averaged/")} == averaged
    config = tiny_seq2seq_config(**AVERAGING)
    task = create_task(config)
    expected = evaluate(task, jax.jit(make_eval_step(task)),
                        average_params(seq2seq_workdir, [2, 3, 4]), task.frozen_variables(),
                        partitioning.make_mesh(dict(config.mesh_shape)), 0, 1)
    assert set(averaged) == {"eval_averaged/num_checkpoints"} | {
        "eval_averaged/" + k.removeprefix("eval/") for k in expected}
    for key, value in expected.items():
        assert averaged["eval_averaged/" + key.removeprefix("eval/")] == pytest.approx(value,
                                                                                       rel=1e-5)
    # Another model than the final one, whose evaluation is kept as it was.
    assert averaged["eval_averaged/loss"] != pytest.approx(summary["final_eval"]["eval/loss"])


@pytest.mark.slow
def test_a_rebuilt_summary_keeps_the_average_evaluation(seq2seq_workdir, tmp_path):
    """A run that died after its final checkpoint and metrics, before ``summary.json``: the
    rerun trains nothing and rebuilds the summary, the average's evaluation included (read
    back from ``metrics.jsonl``)."""
    import shutil

    workdir = str(tmp_path / "copy")
    shutil.copytree(seq2seq_workdir, workdir)
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    os.remove(os.path.join(workdir, "summary.json"))
    rebuilt = train_and_evaluate(tiny_seq2seq_config(**AVERAGING), workdir)
    assert rebuilt["examples_per_sec"] is None  # nothing trained
    assert rebuilt["final_eval_averaged"] == summary["final_eval_averaged"]
    assert rebuilt["final_eval"] == summary["final_eval"]


@pytest.mark.slow
def test_generate_averages_the_newest_checkpoints_asked(seq2seq_workdir, monkeypatch):
    """``--average_last=3`` decodes with the mean of steps 2-4: the same lines as decoding
    with that mean put in place of the newest checkpoint."""
    from trainer import checkpointing
    from trainer.checkpointing import average_params

    asked = []

    def spy(workdir, steps):
        asked.append(list(steps))
        return average_params(workdir, steps)

    monkeypatch.setattr(checkpointing, "average_params", spy)
    lines = ["3 4 5", "6 7 8 9", "10 2"]
    averaged = list(generate(seq2seq_workdir, lines, average_last=3))
    assert asked == [[2, 3, 4]]
    mean = average_params(seq2seq_workdir, [2, 3, 4])
    monkeypatch.setattr(checkpointing, "restore_params_with_meta",
                        lambda workdir, step, ema: (mean, 4, {}))
    assert list(generate(seq2seq_workdir, lines, average_last=1)) == averaged
    with pytest.raises(ValueError, match=r"average_last=4 \(--average_last\), but .* holds the "
                                         r"checkpoints \[2, 3, 4\] only"):
        list(generate(seq2seq_workdir, lines, average_last=4))


@pytest.mark.slow
def test_generate_decodes_the_checkpoint_asked(seq2seq_workdir, monkeypatch):
    """``--step=S`` decodes with that checkpoint's parameters; ``--ema`` with its moving
    average, which this run did not keep."""
    from trainer import checkpointing
    from trainer.checkpointing import MissingAverageError, restore_params

    lines = ["3 4 5", "6 7 8 9", "10 2"]
    from_step_2 = list(generate(seq2seq_workdir, lines, step=2))
    newest = list(generate(seq2seq_workdir, lines))
    second = restore_params(seq2seq_workdir, 2)
    monkeypatch.setattr(checkpointing, "restore_params_with_meta",
                        lambda workdir, step, ema: (second, 4, {}))
    assert list(generate(seq2seq_workdir, lines)) == from_step_2
    monkeypatch.undo()
    assert from_step_2 != newest  # two steps of training apart: other outputs
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 7 .*\[2, 3, 4\]"):
        list(generate(seq2seq_workdir, lines, step=7))
    with pytest.raises(MissingAverageError, match="config.ema_decay=0"):
        list(generate(seq2seq_workdir, lines, ema=True))
    with pytest.raises(ValueError, match="cannot be combined with --ema or --step"):
        list(generate(seq2seq_workdir, lines, step=2, average_last=2))


@pytest.mark.parametrize("average_last", [0, -2])
def test_an_average_of_fewer_than_one_checkpoint_is_refused(tmp_path, average_last):
    with pytest.raises(ValueError, match=rf"average_last={average_last} \(--average_last\) "
                                         "must be an integer >= 1"):
        list(generate(str(tmp_path), ["3"], average_last=average_last))
    with pytest.raises(ValueError, match="not a positive integer"):
        FLAGS["average_last"].parser.parse(str(average_last))
