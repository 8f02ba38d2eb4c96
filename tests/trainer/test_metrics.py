"""metrics.jsonl read back on resume, and the best evaluation kept in the summary."""

import json
import math

import pytest

from trainer.metrics import eval_history, improve_best_eval, read_metrics, truncate_metrics


def _write(workdir, lines):
    (workdir / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def test_a_record_cut_short_at_the_end_is_dropped_and_the_run_resumes(tmp_path, caplog):
    """A run killed (or out of disk) while appending leaves half a line; resuming from its
    intact checkpoint used to fail on it with a bare JSONDecodeError."""
    records = [{"step": 1, "train/loss": 2.0}, {"step": 2, "eval/loss": 1.5}]
    _write(tmp_path, [json.dumps(r) for r in records] + ['{"step": 3, "train/lo'])
    assert read_metrics(str(tmp_path)) == records
    assert "metrics.jsonl:3: dropped a record cut short" in caplog.text
    assert eval_history(str(tmp_path), 2) == ({"eval/loss": 1.5}, {"eval/loss": 1.5})
    truncate_metrics(str(tmp_path), 2)  # what a resumed run does first
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [
        json.dumps(r) for r in records]


def test_a_damaged_record_before_the_last_is_named(tmp_path):
    _write(tmp_path, ['{"step": 1}', "garbage", '{"step": 3}'])
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record .*'garbage'"):
        read_metrics(str(tmp_path))


def test_a_nan_evaluation_never_becomes_the_best():
    best = {}
    for evaluation in ({"eval/loss": math.nan, "eval/accuracy": math.nan},
                       {"eval/loss": 0.3, "eval/accuracy": 0.7},
                       {"eval/loss": 0.2, "eval/accuracy": 0.9},
                       {"eval/loss": math.inf, "eval/accuracy": 0.5}):
        improve_best_eval(best, evaluation)
    assert best == {"eval/loss": 0.2, "eval/accuracy": 0.9}
