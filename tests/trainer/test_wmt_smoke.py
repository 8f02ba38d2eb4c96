"""The WMT14 config for a few steps on offline random data, through the real TFDS path."""

import pytest

from input_pipeline.fake_data import build_fake_dataset
from tests.trainer.launcher import run_launcher
from trainer.metrics import read_metrics


@pytest.mark.slow
def test_wmt14_base_config_runs_on_mock_data(tmp_path):
    data_dir = build_fake_dataset("wmt14_translate/de-en", str(tmp_path / "tfds"),
                                  {"train": 64, "test": 16})
    workdir = str(tmp_path / "run")
    run_launcher(
        "configs/transformer_wmt14.py", workdir,
        f"--config.dataset.data_dir={data_dir}",
        f"--config.dataset.vocab_path={tmp_path / 'spm.model'}",
        "--config.dataset.vocab_size=64", "--config.model.vocab_size=64",
        "--config.model.name=micro", "--config.model.max_length=32",
        "--config.dataset.max_length=32", "--config.batch_size=16",
        "--config.eval_batch_size=16", "--config.num_train_steps=3",
        "--config.log_every_steps=1", "--config.eval_every_steps=3",
        "--config.checkpoint_every_steps=3", "--config.schedule.warmup_steps=2",
        "--config.mixed_precision=False", "--config.progress_bar=False",
        "--config.bleu_eval_batches=1")
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"eval/token_accuracy", "eval/exact_match", "eval/loss", "eval/bleu"} <= set(
        records[-1])
    assert 0.0 <= records[-1]["eval/bleu"] <= 100.0
    assert (tmp_path / "spm.model").exists()
