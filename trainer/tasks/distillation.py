"""Teacher → student distillation for image classification.

The teacher is frozen: its parameters enter the jitted step as an input that receives no
gradient and is never checkpointed. It sees the same augmented batch as the student
("consistent teaching", Beyer et al., 2022), resized on device when the two models use
different resolutions.

Config (``config.distill``): ``method`` — ``"soft"`` (Hinton: (1−α)·CE + α·T²·KL),
``"hard"`` (DeiT hard labels), ``"deit_token"`` (DeiT distillation token; the student needs
``distillation_token=True``) or ``"none"`` (student from scratch); ``temperature``, ``alpha``,
``reduction`` (``batchmean``/``mean``); ``teacher_model`` (a ``config.model``-like ViT
description); ``teacher_checkpoint`` — a workdir of this project (orbax) or an official-layout
``.npz``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import distill
import vit
from trainer.tasks.base import Batch, Metrics, masked_sum, register_task
from trainer.tasks.classification import ClassificationTask, build_vit

METHODS = ("soft", "hard", "deit_token", "none")


def load_teacher_params(path: str, model: vit.VisionTransformer) -> Any:
    """A teacher's parameters from a workdir (its newest orbax checkpoint) or an ``.npz``."""
    if path.endswith(".npz"):
        return vit.load_pretrained(path, model)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        from trainer.checkpointing import restore_params

        return restore_params(path)
    raise FileNotFoundError(
        f"distill.teacher_checkpoint={path!r} is neither an .npz file nor a workdir with "
        "checkpoints/ (train the teacher first with trainer.main)")


@register_task("distillation")
class DistillationTask(ClassificationTask):
    """The student is ``config.model``; the teacher ``config.distill.teacher_model``."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        options = config.distill
        if options.method not in METHODS:
            raise ValueError(f"distill.method={options.method!r} is not supported; expected "
                             f"one of {METHODS}")
        if (options.method == "deit_token") != bool(self.model.distillation_token):
            raise ValueError("distill.method='deit_token' and model.distillation_token=True go "
                             f"together; got method={options.method!r}, distillation_token="
                             f"{self.model.distillation_token}")
        self.options = options
        self.teacher = build_vit(options.teacher_model, jnp.float32)
        if self.teacher.num_classes != self.num_classes:
            raise ValueError(f"teacher has {self.teacher.num_classes} classes, the student "
                             f"{self.num_classes}")
        self._teacher_params = None

    def frozen_variables(self) -> Any:
        if self.options.method == "none":
            return {}
        if self._teacher_params is None:
            self._teacher_params = load_teacher_params(self.options.teacher_checkpoint,
                                                       self.teacher)
        return {"teacher": self._teacher_params}

    def teacher_logits(self, frozen: Any, images: jax.Array) -> jax.Array:
        size = self.teacher.image_size
        height, width = (size, size) if isinstance(size, int) else size
        if images.shape[1:3] != (height, width):
            images = jax.image.resize(images, (images.shape[0], height, width, images.shape[3]),
                                      "bilinear")
        logits = self.teacher.apply({"params": frozen["teacher"]}, images, train=False)
        return jax.lax.stop_gradient(logits)

    def loss(self, params: Any, batch: Batch, rng: jax.Array,
             frozen: Any) -> tuple[jax.Array, Metrics]:
        if self.options.method == "none":
            return super().loss(params, batch, rng, frozen)
        mix_rng, dropout_rng = jax.random.split(rng)
        onehot = jax.nn.one_hot(batch["label"], self.num_classes)
        images, targets = self._mix(mix_rng, batch["image"], onehot)
        labels = targets  # [batch, classes]: mixup/cutmix soft targets are kept as they are
        teacher = self.teacher_logits(frozen, images)
        outputs = self.model.apply({"params": params}, images, train=True,
                                   rngs={"dropout": dropout_rng})
        smoothing = self.config.get("label_smoothing", 0.0)
        options = self.options
        if options.method == "deit_token":
            cls_logits, dist_logits = outputs
            loss = distill.deit_distillation_token_loss(
                cls_logits, dist_logits, teacher, labels, distillation_type=options.token_type,
                alpha=options.alpha, temperature=options.temperature,
                label_smoothing=smoothing)
            student = distill.deit_inference_logits(cls_logits, dist_logits)
        elif options.method == "hard":
            loss = distill.hard_distillation_loss(outputs, teacher, labels,
                                                  label_smoothing=smoothing)
            student = outputs
        else:
            loss = distill.hinton_loss(outputs, teacher, labels, temperature=options.temperature,
                                       alpha=options.alpha, reduction=options.reduction,
                                       label_smoothing=smoothing)
            student = outputs
        return loss, {"agreement": distill.top1_agreement(student, teacher)}

    def eval_sums(self, params: Any, batch: Batch, frozen: Any) -> Metrics:
        sums = super().eval_sums(params, batch, frozen)
        if "teacher" not in frozen:
            return sums
        teacher = self.teacher_logits(frozen, batch["image"])
        student = self.logits(params, batch["image"], None, train=False)
        same = jnp.argmax(student, -1) == jnp.argmax(teacher, -1)
        sums["teacher_accuracy"] = masked_sum(jnp.argmax(teacher, -1) == batch["label"],
                                              batch["mask"])
        sums["agreement"] = masked_sum(same, batch["mask"])
        return sums

    def on_train_end(self, params: Any, frozen: Any, workdir: str,
                     final_eval: dict[str, float]) -> dict[str, Any] | None:
        """Writes the compression report (terminal table + ``compression_report.json``)."""
        from trainer import compression_report

        dummy = self.dummy_batch(self.config.get("report_batch_size", 32))["image"]
        models = {"student": (self.model, params)}
        if "teacher" in frozen:
            teacher_images = np.zeros((dummy.shape[0], *self._teacher_image_shape()),
                                      np.float32)
            models["teacher"] = (self.teacher, frozen["teacher"], teacher_images)
        return compression_report.write_report(workdir, models, dummy, final_eval)

    def _teacher_image_shape(self) -> tuple[int, int, int]:
        size = self.teacher.image_size
        height, width = (size, size) if isinstance(size, int) else size
        return height, width, self.teacher.num_channels
