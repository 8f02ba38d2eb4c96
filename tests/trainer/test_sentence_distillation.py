"""Distilling all-MiniLM-L6-v2 into a 2-block student through the launcher (smoke test), and
the held-out metrics it reports."""

import json
import os

import numpy as np
import pytest

from tests.trainer.launcher import run_launcher
from trainer.tasks.sentence_distillation import nearest_neighbour_agreement
from transformer import pretrained

try:
    pretrained.minilm_model_dir()
    HAVE_MINILM = True
except FileNotFoundError:
    HAVE_MINILM = False


def test_nearest_neighbour_agreement_by_hand():
    teacher = np.eye(4)[[0, 0, 1, 1]] + 0.1 * np.eye(4)  # rows 0/1 and 2/3 are neighbours
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    assert nearest_neighbour_agreement(teacher, teacher) == 1.0
    swapped = teacher[:, [2, 3, 0, 1]][[0, 2, 1, 3]]  # neighbours now 0/2 and 1/3
    assert nearest_neighbour_agreement(swapped, teacher) == 0.0
    # One sentence has no other to be nearest to (it used to score 1.0 whatever the
    # embeddings); none used to fail inside numpy's argmax.
    for rows in (1, 0):
        with pytest.raises(ValueError, match=f"n >= 2 sentences.*got {rows} and {rows} rows"):
            nearest_neighbour_agreement(teacher[:rows], -teacher[:rows])


@pytest.mark.skipif(not HAVE_MINILM, reason=pretrained.MINILM_INSTALL)
def test_a_max_length_beyond_the_teachers_positions_is_named():
    from configs import distill_minilm
    from trainer.tasks import create_task

    config = distill_minilm.get_config()
    config.max_length = 600
    with pytest.raises(ValueError, match=r"config.max_length=600 must be in \[2, 512\]"):
        create_task(config)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MINILM, reason=pretrained.MINILM_INSTALL)
def test_student_distillation_runs_and_reports(tmp_path):
    workdir = str(tmp_path / "student")
    result = run_launcher(
        "configs/distill_minilm.py", workdir, "--config.num_train_steps=4",
        "--config.log_every_steps=2", "--config.eval_every_steps=4",
        "--config.checkpoint_every_steps=4", "--config.schedule.warmup_steps=1",
        "--config.batch_size=8", "--config.eval_batch_size=16", "--config.max_length=16",
        "--config.dataset.source_kwargs.max_examples=32", "--config.report_batch_size=8",
        "--config.distill.attention_weight=1.0", "--config.progress_bar=False",
        devices=2, timeout=600)
    assert "nn_agreement" in result.stdout
    with open(os.path.join(workdir, "compression_report.json")) as f:
        report = json.load(f)
    rows = report["models"]
    # 2 of 6 blocks: the student's encoder does a third of the teacher's work.
    assert rows["student"]["flops_per_example"] < 0.5 * rows["teacher"]["flops_per_example"]
    assert rows["student"]["parameters"] < rows["teacher"]["parameters"]
    quality = report["quality"]
    # Initialised from teacher blocks 0 and 5 and trained 4 steps: already close, not equal.
    assert 0.2 < quality["mean_cosine"] < 1.0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert any("train/attention_loss" in r for r in records)
    # The report's quality is the final evaluation's (any fraction would pass a range check).
    assert quality["nn_agreement"] == records[-1]["eval/nn_agreement"]
    assert quality["mean_cosine"] == records[-1]["eval/cosine"]
