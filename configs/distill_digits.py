"""Distil a ViT teacher into a smaller ViT student on the offline digits data.

Commands (teacher first, then the student; both offline, on a 2-core CPU):
  python -m trainer.main --config=configs/vit_digits.py --workdir=workdirs/digits_teacher
  python -m trainer.main --config=configs/distill_digits.py:soft \
      --config.distill.teacher_checkpoint=workdirs/digits_teacher --workdir=workdirs/digits_kd

Argument: the method — ``soft`` (Hinton, T=4, α=0.5), ``hard`` (DeiT hard labels),
``deit_token`` (DeiT distillation token, hard) or ``none`` (the student from scratch).
Feature and attention distillation (TinyBERT, MiniLM) add to any method but ``none``:
``--config.distill.feature_weight=1 --config.distill.attention_weight=1``.
The student has a quarter of the teacher's depth and half its width, and starts from scratch
(or from an official-layout ``.npz``: ``--config.init_checkpoint``, configs/common.py). At the
end of the run a compression report (parameters, FLOPs, latency, throughput, accuracy of both,
top-1 agreement; with ``none`` no teacher is loaded, so the student's row alone) is printed
and written to ``compression_report.json``.
Hardware and time: a 2-core CPU, a few minutes.

Expected result: the commands above (1500 steps, a GAP head, every label, no transfer set) are
not a setting that docs/distillation.md measures. Its table is regenerated, teacher included,
by ``python -m benchmarks.distillation_table --seeds=5 --out=docs/distillation.md``. One
entry of it (one row, one seed) with the teacher above (1500 steps of vit_digits.py, as the
table's), e.g. "soft distillation, T=4", seed 0:
  python -m trainer.main --config=configs/distill_digits.py:soft \
      --config.distill.teacher_checkpoint=workdirs/digits_teacher --workdir=workdirs/kd_row \
      --config.model.classifier=token --config.num_train_steps=600 \
      --config.schedule.warmup_steps=60 --config.dataset.train_split='train[:10%]' \
      --config.distill.unlabelled_split='train[10%:]' --config.distill.temperature=4 \
      --config.seed=0
Other rows: ``:soft`` with ``--config.distill.temperature=1``; ``:hard`` and ``:deit_token``
with ``--config.distill.temperature=1`` (their hard targets do not read it); ``:none`` without
``--config.distill.unlabelled_split`` (the student from scratch has no teacher to learn
unlabelled images from). Seeds 0..4 give the table's "per seed" column.
"""

import ml_collections

from configs import vit_digits
from configs.common import vit_model

METHODS = ("soft", "hard", "deit_token", "none")


def get_config(arg: str | None = "soft"):
    method = arg or "soft"
    if method not in METHODS:
        raise ValueError(f"config argument {method!r} is not one of {METHODS}")
    config = vit_digits.get_config()
    config.task = "distillation"
    teacher = config.model
    config.model = vit_model(
        "ViT-micro", num_classes=10, image_size=8, patch_size=2, num_channels=1,
        hidden_size=32, num_layers=1, num_heads=2, mlp_dim=64, dropout_rate=0.0,
        classifier="token" if method == "deit_token" else "gap",
        distillation_token=method == "deit_token")
    config.distill = ml_collections.ConfigDict(dict(
        method=method,
        teacher_model=teacher,
        teacher_checkpoint="workdirs/digits_teacher",
        # An .npz teacher's position grid (height, width), when neither recorded nor square.
        teacher_checkpoint_grid=ml_collections.FieldReference(None, field_type=tuple),
        # Read the teacher run's moving average (its config.ema_decay) instead.
        teacher_ema=False,
        temperature=4.0,
        alpha=0.5,
        reduction="batchmean",
        token_type="hard",
        # More training images, whose labels are never read: learnt from the teacher alone
        # (e.g. "train[10%:]" with dataset.train_split="train[:10%]"; docs/distillation.md).
        unlabelled_split="",
        # TinyBERT/MiniLM terms, added to the method's loss (0: off); see
        # trainer/tasks/distillation.py for the layer map and the projection.
        feature_weight=0.0,
        feature_loss="mse",
        attention_weight=0.0,
    ))
    config.report_batch_size = 128
    return config
