"""``python -m trainer.evaluate``: a run's checkpoint (newest, a step, the moving average, the
mean of the last ones) or an official-layout ``.npz`` evaluated without training."""

import json
import os
import subprocess
import sys

import grain
import jax
import ml_collections
import numpy as np
import pytest

from tests.trainer.launcher import REPO
from tests.trainer.tiny import tiny_digits_config
from tests.xla_flags import xla_flags
from trainer import checkpointing
from trainer.evaluate import (
    evaluate_params,
    init_checkpoint_params,
    load_run_config,
    run_params,
)
from trainer.tasks import create_task
from trainer.train import train_and_evaluate

# Four steps, a checkpoint at each, evaluations at 2 and 4, the moving average kept (decay
# 0.5); stopped at step 2 and resumed: the run holds steps 1 to 4.
DECAY = 0.5
RUN = {"num_train_steps": 4, "eval_every_steps": 2, "checkpoint_every_steps": 1,
       "keep_checkpoints": 4, "schedule.warmup_steps": 1, "ema_decay": DECAY}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_data_dir):
    workdir = str(tmp_path_factory.mktemp("evaluate") / "run")
    train_and_evaluate(tiny_digits_config(digits_data_dir, stop_after_step=2, **RUN), workdir)
    summary = train_and_evaluate(tiny_digits_config(digits_data_dir, **RUN), workdir)
    return workdir, summary


def _assert_metrics_equal(found, expected, prefix="eval/"):
    assert set(found) == {k.replace(prefix, "eval/") for k in expected}
    for key, value in expected.items():
        assert found[key.replace(prefix, "eval/")] == pytest.approx(value, rel=1e-6, abs=1e-7)


@pytest.mark.slow
def test_a_runs_checkpoints_evaluate_as_the_run_evaluated_them(digits_run):
    """The newest checkpoint gives the run's final ``eval/*``, its moving average the run's
    ``eval_ema/*``, through the config the run saved."""
    workdir, summary = digits_run
    config = load_run_config(workdir)
    params, source, step = run_params(workdir)
    assert source == f"the parameters of the checkpoint at step 4 of {workdir}" and step == 4
    _assert_metrics_equal(evaluate_params(config, params), summary["final_eval"])
    average, source, _ = run_params(workdir, ema=True)
    assert source.startswith("the moving average of the parameters of the checkpoint at step 4")
    _assert_metrics_equal(evaluate_params(config, average), summary["final_eval_ema"],
                          prefix="eval_ema/")
    third, source, step = run_params(workdir, step=3)
    assert source == f"the parameters of the checkpoint at step 3 of {workdir}" and step == 3
    mean, source, step = run_params(workdir, average_last=2)
    assert source == f"the mean of the checkpoints at steps [3, 4] of {workdir}" and step == 4
    np.testing.assert_allclose(mean["head"]["bias"],
                               (third["head"]["bias"] + params["head"]["bias"]) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match=r"holds the checkpoints \[1, 2, 3, 4\] only"):
        run_params(workdir, average_last=5)
    with pytest.raises(ValueError, match="cannot be combined with --ema or --step"):
        run_params(workdir, ema=True, average_last=2)


@pytest.mark.slow
def test_an_official_layout_npz_is_evaluated_as_it_is(digits_run, tmp_path, digits_data_dir):
    """``config.init_checkpoint`` evaluated: the run's parameters written as an official
    ``.npz`` give the run's metrics; a head of other classes is refused, not replaced (a
    replaced head would score chance without saying so); parameters of another model are
    refused naming what differs."""
    import vit

    workdir, summary = digits_run
    config = tiny_digits_config(digits_data_dir, **RUN)
    task = create_task(config)
    path = str(tmp_path / "run.npz")
    vit.save_npz(checkpointing.restore_params(workdir), path, grid_size=task.model.grid_size)
    config.init_checkpoint = path
    params, source = init_checkpoint_params(config, task)
    assert source == f"config.init_checkpoint={path}"
    _assert_metrics_equal(evaluate_params(config, params, task), summary["final_eval"])
    other_classes = tiny_digits_config(digits_data_dir, **RUN, **{"model.num_classes": 7})
    other_classes.init_checkpoint = path
    with pytest.raises(ValueError, match="head/kernel"):
        init_checkpoint_params(other_classes, create_task(other_classes))
    wider = tiny_digits_config(digits_data_dir, **RUN, **{"model.mlp_dim": 48})
    with pytest.raises(checkpointing.CheckpointMismatchError, match="MlpBlock"):
        evaluate_params(wider, params)


def test_nothing_to_evaluate_and_a_non_vit_init_checkpoint_are_named(digits_data_dir):
    config = tiny_digits_config(digits_data_dir)
    with pytest.raises(ValueError, match="nothing to evaluate: give --workdir"):
        init_checkpoint_params(config, None)
    config.task, config.init_checkpoint = "seq2seq", "model.npz"
    with pytest.raises(ValueError, match="for config.task='classification' only, not 'seq2seq'"):
        init_checkpoint_params(config, None)


@pytest.mark.slow
def test_the_command_line_prints_and_writes_the_metrics(digits_run, tmp_path):
    workdir, summary = digits_run
    out = str(tmp_path / "metrics.json")
    result = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", f"--workdir={workdir}", "--ema",
         f"--out={out}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "XLA_FLAGS": xla_flags(1)})
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        written = json.load(f)
    assert json.loads(result.stdout) == written
    assert written["parameters"].startswith("the moving average of the parameters")
    assert (written["dataset"], written["split"]) == ("digits", "test")
    metrics = {k: v for k, v in written.items() if k.startswith("eval/")}
    _assert_metrics_equal(metrics, summary["final_eval_ema"], prefix="eval_ema/")


def test_the_finetuning_config_has_the_official_imagenet_preset():
    """vit_jax's ``imagenet2012`` preset (``train[:99%]``, ``validation``, 20,000 steps, 500 of
    warmup, base learning rate 0.03, 384 px): the config an official ImageNet-fine-tuned
    checkpoint is evaluated with, and fine-tuned with."""
    from configs import vit_finetune
    from trainer import config_validation

    config = vit_finetune.get_config("imagenet2012")
    config_validation.validate(config)
    assert (config.dataset.name, config.dataset.train_split, config.dataset.eval_split) == (
        "imagenet2012", "train[:99%]", "validation")
    assert (config.model.num_classes, config.model.image_size) == (1000, 384)
    assert (config.num_train_steps, config.schedule.warmup_steps) == (20_000, 500)
    assert config.optimizer.learning_rate == 0.03
    # The CIFAR-10 preset keeps the README's 500 steps with 50 of warmup.
    cifar = vit_finetune.get_config("cifar10")
    assert (cifar.num_train_steps, cifar.schedule.warmup_steps) == (500, 50)


@pytest.mark.slow
def test_the_moving_average_is_checkpointed_across_a_resume_and_evaluated(digits_run,
                                                                         digits_data_dir):
    """``config.ema_decay``: the checkpointed average is the formula applied to the
    checkpointed parameters of steps 0 (the seed's initialisation), 1, 2, 3 and 4, across
    the restart at step 2, and ``eval_ema/*`` is logged at both evaluations."""
    import jax

    from trainer.metrics import read_metrics
    from trainer.optimizers import make_optimizer
    from trainer.steps import init_state

    workdir, summary = digits_run
    config = tiny_digits_config(digits_data_dir, **RUN)
    task = create_task(config)
    tx, _ = make_optimizer(config, config.num_train_steps)
    initial = jax.jit(lambda: init_state(task, tx, config.seed, task.dummy_batch(8)))().params
    expected = jax.tree.map(lambda x: np.asarray(x, np.float64), initial)
    for step in (1, 2, 3, 4):
        params = checkpointing.restore_params(workdir, step)
        expected = jax.tree.map(lambda e, p: DECAY * e + (1 - DECAY) * p, expected, params)
    average = checkpointing.restore_params(workdir, 4, ema=True)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-7),
                 average, expected)
    records = [r for r in read_metrics(workdir) if "eval_ema/loss" in r]
    assert [r["step"] for r in records] == [2, 4]
    assert summary["final_eval_ema"] == {k: v for k, v in records[-1].items()
                                         if k.startswith("eval_ema/")}
    assert summary["final_eval_ema"]["eval_ema/loss"] != pytest.approx(
        summary["final_eval"]["eval/loss"])
    # The best of each over both evaluations, the one before the restart included.
    for key in ("eval_ema/loss", "eval_ema/accuracy"):
        better = min if key.endswith("loss") else max
        assert summary["best_eval_ema"][key] == better(r[key] for r in records)
    assert set(summary["best_eval_ema"]) == set(summary["final_eval_ema"])
    assert records[0]["eval_ema/loss"] != records[1]["eval_ema/loss"]
    with open(os.path.join(workdir, "summary.json")) as f:
        saved = json.load(f)
    assert saved["final_eval_ema"] == summary["final_eval_ema"]
    assert saved["best_eval_ema"] == summary["best_eval_ema"]


def _distillation_task(run_workdir, data_dir, teacher_checkpoint=None, **distill):
    """A distillation task whose teacher is ``run_workdir``'s model, read from
    ``teacher_checkpoint`` (default: that run)."""
    from configs import distill_digits

    config = distill_digits.get_config("soft")
    config.dataset.data_dir = data_dir
    config.distill.teacher_model = load_run_config(run_workdir).model
    config.distill.teacher_checkpoint = teacher_checkpoint or run_workdir
    # A fresh ConfigDict: the typed fields of distill_digits would refuse a wrong type first.
    config.distill = ml_collections.ConfigDict({**config.distill.to_dict(), **distill})
    return create_task(config)


@pytest.mark.slow
def test_a_distillation_teacher_can_be_its_runs_moving_average(digits_run, digits_data_dir,
                                                              tmp_path):
    """``config.distill.teacher_ema``: the teacher is the moving average its run kept, and a
    resumed student keeps the choice it was trained with."""
    workdir, _ = digits_run
    average = checkpointing.restore_params(workdir, ema=True)
    model = checkpointing.restore_params(workdir)
    task = _distillation_task(workdir, digits_data_dir, teacher_ema=True)
    teacher = task.frozen_variables()["teacher"]
    jax.tree.map(np.testing.assert_array_equal, teacher, average)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, average, model)))
    assert task.checkpoint_meta()["teacher"] == {"checkpoint": workdir, "step": 4, "ema": True}
    # A student trained with the model itself as teacher resumes with it, not the average.
    with pytest.raises(ValueError, match="teacher_ema=True, but the checkpoint being resumed "
                                         "or evaluated was trained with teacher_ema=False"):
        task.resumed_frozen_variables({"teacher": {"checkpoint": workdir, "step": 4}})
    plain = _distillation_task(workdir, digits_data_dir)
    jax.tree.map(np.testing.assert_array_equal, plain.frozen_variables()["teacher"], model)

    # A teacher without an average, and an .npz, are refused naming the setting.
    without = str(tmp_path / "no_average")
    checkpointer = checkpointing.Checkpointer(without, async_save=False)
    checkpointer.save(4, {"step": np.int32(4), "params": model, "rng": np.zeros(2, np.uint32)},
                      iter(grain.MapDataset.range(4).to_iter_dataset()), {})
    checkpointer.close()
    with pytest.raises(ValueError, match="teacher_ema=True, but the checkpoint .* holds no "
                                         "moving average"):
        _distillation_task(workdir, digits_data_dir, without, teacher_ema=True).frozen_variables()
    with pytest.raises(ValueError, match="teacher_ema=True.*is an .npz"):
        _distillation_task(workdir, digits_data_dir, str(tmp_path / "teacher.npz"),
                           teacher_ema=True).frozen_variables()
    with pytest.raises(ValueError, match="teacher_ema='yes' must be True or False"):
        _distillation_task(workdir, digits_data_dir, teacher_ema="yes")
