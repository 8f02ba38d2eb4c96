"""Each task for a few steps through ``python -m trainer.main``, and the launcher's errors."""

import json
import os

import pytest

from tests.trainer.launcher import run_launcher
from tests.trainer.tiny import STEP_FLAGS, TINY_VIT_FLAGS
from trainer.metrics import read_metrics

TRAIN_KEYS = {"step", "train/loss", "train/learning_rate", "train/examples_per_sec",
              "train/mfu"}


def _check_outputs(workdir, eval_keys):
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [2, 3, 4, 6]
    assert all(TRAIN_KEYS <= set(r) for r in records)
    # Model FLOPs utilisation: the step's XLA-counted FLOPs over the measured peak (a matmul
    # timed at start; other test processes share the CPU, so only its sign is certain).
    assert all(0.0 < r["train/mfu"] < float("inf") for r in records)
    assert eval_keys <= set(records[1]) and eval_keys <= set(records[-1])
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    event_files = os.listdir(os.path.join(workdir, "tensorboard"))
    assert any(name.startswith("events.out.tfevents") for name in event_files)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["step"] == 6 and summary["num_params"] > 0
    assert eval_keys <= set(summary["final_eval"])


@pytest.mark.slow
def test_classification_through_launcher(tmp_path, digits_data_dir):
    workdir = str(tmp_path / "run")
    result = run_launcher("configs/vit_digits.py", workdir, *STEP_FLAGS, *TINY_VIT_FLAGS,
                          f"--config.dataset.data_dir={digits_data_dir}")
    assert "model parameters=" in result.stdout
    assert '"final_eval"' in result.stdout
    _check_outputs(workdir, {"eval/accuracy", "eval/loss"})


@pytest.mark.slow
def test_seq2seq_through_launcher(tmp_path):
    workdir = str(tmp_path / "run")
    run_launcher("configs/seq2seq_synthetic.py:reverse", workdir, *STEP_FLAGS,
                 "--config.model.name=micro", "--config.batch_size=16",
                 "--config.dataset.source_kwargs.num_examples=256")
    _check_outputs(workdir, {"eval/token_accuracy", "eval/exact_match", "eval/loss"})


def test_misspelt_config_field_names_the_close_one(tmp_path):
    result = run_launcher("configs/vit_digits.py", str(tmp_path / "run"),
                          "--config.batch_sise=64", check=False)
    assert result.returncode != 0
    assert "batch_sise" in result.stderr and 'Did you mean "batch_size"' in result.stderr


def test_missing_offline_dataset_fails_with_instructions(tmp_path):
    result = run_launcher("configs/vit_cifar10.py:Ti_16", str(tmp_path / "run"),
                          f"--config.dataset.data_dir={tmp_path / 'empty'}", check=False)
    assert result.returncode != 0
    assert "DatasetNotFoundError" in result.stderr
    assert "'cifar10'" in result.stderr and "tfds build cifar10" in result.stderr
    assert "array_record" in result.stderr


@pytest.mark.parametrize("flag, message", [
    ("--config.batch_size=12", "batch_size=12 must be a positive multiple of the number of "
                               "devices (8)"),
    ("--config.mesh_shape.fsdp=3", "mesh_shape"),
    ("--config.optimizer.name=lamb", "optimizer.name='lamb'"),
])
def test_impossible_configs_fail_clearly(tmp_path, digits_data_dir, flag, message):
    result = run_launcher("configs/vit_digits.py", str(tmp_path / "run"), flag,
                          f"--config.dataset.data_dir={digits_data_dir}", check=False)
    assert result.returncode != 0
    assert message in result.stderr
