"""The distillation task through the launcher, on tiny models."""

import json
import os

import jax
import numpy as np
import pytest

from tests.trainer.launcher import run_launcher
from tests.trainer.tiny import STEP_FLAGS, TINY_VIT_FLAGS, tiny_digits_config
from trainer.checkpointing import restore_params
from trainer.train import train_and_evaluate

TEACHER = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, dropout_rate=0.0,
               classifier="gap")
TEACHER_FLAGS = tuple(f"--config.distill.teacher_model.{k}={v}" for k, v in TEACHER.items())


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory, digits_data_dir):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    overrides = {f"model.{k}": v for k, v in TEACHER.items()}
    train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=4, **overrides),
                       workdir)
    return workdir


@pytest.mark.parametrize("method", ["soft", pytest.param("hard", marks=pytest.mark.slow),
                                    pytest.param("deit_token", marks=pytest.mark.slow)])
def test_distillation_through_launcher(tmp_path, digits_data_dir, teacher_workdir, method):
    teacher_before = restore_params(teacher_workdir)
    workdir = str(tmp_path / "student")
    result = run_launcher(
        f"configs/distill_digits.py:{method}", workdir, *STEP_FLAGS, *TEACHER_FLAGS,
        f"--config.distill.teacher_checkpoint={teacher_workdir}",
        f"--config.dataset.data_dir={digits_data_dir}", "--config.report_batch_size=8")
    assert "compression report" in result.stdout
    # Only the student is checkpointed, and the teacher's checkpoint is untouched.
    student = restore_params(workdir)
    assert "teacher" not in student and "Transformer" in student
    assert student["Transformer"]["posembed_input"]["pos_embedding"].shape[-1] == 32
    for a, b in zip(jax.tree.leaves(teacher_before), jax.tree.leaves(
            restore_params(teacher_workdir))):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(workdir, "compression_report.json")) as f:
        report = json.load(f)
    rows = report["models"]
    assert rows["teacher"]["parameters"] > rows["student"]["parameters"] > 0
    assert rows["teacher"]["flops_per_example"] > rows["student"]["flops_per_example"] > 0
    assert 0.0 <= report["top1_agreement"] <= 1.0
    assert rows["teacher"]["accuracy"] is not None and rows["student"]["accuracy"] is not None


def test_teacher_is_frozen_inside_the_step(digits_data_dir, teacher_workdir):
    """Gradients reach only the student's parameters."""
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("soft")
    for key, value in TEACHER.items():
        config.distill.teacher_model[key] = value
    config.distill.teacher_checkpoint = teacher_workdir
    config.dataset.data_dir = digits_data_dir
    task = create_task(config)
    batch = task.dummy_batch(4)
    batch["image"] = np.random.default_rng(0).normal(size=batch["image"].shape).astype(
        np.float32)
    params = task.init_params(jax.random.key(0), batch)
    frozen = task.frozen_variables()
    grads = jax.grad(lambda p, f: task.loss(p, batch, jax.random.key(1), f)[0],
                     argnums=(0, 1))(params, frozen)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads[1]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads[0]))


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path, digits_data_dir):
    result = run_launcher("configs/distill_digits.py:soft", str(tmp_path / "s"), *STEP_FLAGS,
                          f"--config.distill.teacher_checkpoint={tmp_path / 'nowhere'}",
                          f"--config.dataset.data_dir={digits_data_dir}", check=False)
    assert result.returncode != 0 and "teacher_checkpoint" in result.stderr
