"""Teacher → student distillation for image classification.

The teacher is frozen: its parameters enter the jitted step as an input that receives no
gradient and is never checkpointed. It sees the same augmented batch as the student
("consistent teaching", Beyer et al., 2022), resized on device when the two models use
different resolutions.

Config (``config.distill``): ``method`` — ``"soft"`` (Hinton: (1−α)·CE + α·T²·KL),
``"hard"`` (DeiT hard labels: ½·CE(labels) + ½·CE(teacher's argmax), DeiT's fixed weights;
``alpha`` and ``temperature`` are not read: an ``alpha`` other than 0.5 is logged as ignored, a
temperature is not, as it cannot move an argmax), ``"deit_token"`` (DeiT distillation token;
the student needs ``distillation_token=True``) or ``"none"`` (student from scratch);
``temperature`` and ``alpha`` (``soft``, ``deit_token``); ``reduction`` of the soft term
(``soft`` only: ``batchmean`` or ``mean``; ``distill.losses``' per-example ``"none"`` is
refused, as the step differentiates a scalar); ``token_type`` (required by ``deit_token``:
what the distillation head learns, one of ``distill.DISTILLATION_TYPES`` — ``"hard"``, the
teacher's argmax, DeiT's best; ``"soft"``, T²·KL averaged over B·K elements; ``"none"``, no
teacher term); ``teacher_model`` (a ``config.model``-like ViT
description); ``teacher_checkpoint`` — a workdir of this project (orbax) or an official-layout
``.npz`` (``teacher_checkpoint_grid``: its position grid when not recorded and not square,
as ``config.init_checkpoint_grid``); ``teacher_ema`` — read a workdir teacher's moving
average of its parameters (its run's ``config.ema_decay``, timm's model EMA) instead of
the parameters themselves; ``unlabelled_split`` (optional) — more training images
whose labels are never read: the student sees them with ``dataset.train_split`` in one
shuffled stream and learns them from the teacher alone (a transfer set, Hinton et al., 2015;
function matching, Beyer et al., 2022): their label terms are weighted 0 (``distill.losses``,
``label_weights``).

Feature and attention distillation (TinyBERT, MiniLM) add to any method but ``none``:
``feature_weight`` × the hidden-state loss (``feature_loss``: ``"mse"`` or ``"cosine"``) over
every student block, block i matched to teacher block ⌈(i+1)·L_t/L_s⌉ − 1 (TinyBERT's uniform
map), through a learned ``distill.FeatureProjection`` when the widths differ; and
``attention_weight`` × KL(teacher ‖ student) between the last blocks' attention maps (MiniLM),
averaged over heads when the head counts differ. Both models' hidden states and attention
maps come from their ordinary forward passes (Flax's ``intermediates`` collection), never from
a second pass. Only patch tokens are compared (class and distillation tokens are dropped and
the attention rows renormalised), so students and teachers with different prefix tokens match.
The projection's parameters live in the student's train state under ``distill_projection``
and are dropped from everything that runs the student alone (evaluation, reports).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import distill
import input_pipeline
import vit
from trainer.tasks import common
from trainer.tasks.base import Batch, Metrics, masked_sum, register_task
from trainer.tasks.classification import (
    EXAMPLE_KEYS,
    ClassificationTask,
    build_vit,
    checkpoint_grid,
)

METHODS = ("soft", "hard", "deit_token", "none")
# The step takes the gradient of one number: distill.losses' "none" (a loss per example) is
# refused when the task is built instead of failing inside jax.grad.
SCALAR_REDUCTIONS = tuple(r for r in distill.REDUCTIONS if r != "none")
HARD_ALPHA = 0.5  # DeiT's hard distillation weighs labels and teacher ½ : ½ (not configurable)
FEATURE_LOSSES = ("mse", "cosine")
PROJECTION = "distill_projection"  # the projection's key in the student's params


def student_only(params: Any) -> Any:
    """The student's own parameters: without the feature projection used in training."""
    return {k: v for k, v in params.items() if k != PROJECTION}


def block_outputs(state: Any, num_layers: int) -> list[tuple[jax.Array, jax.Array]]:
    """``(hidden [batch, tokens, width], attention [batch, heads, tokens, tokens])`` of each
    encoder block, from a ViT's ``intermediates`` collection."""
    blocks = state["intermediates"]["Transformer"]
    if "encoderblock_0" not in blocks:
        raise ValueError("feature/attention distillation needs config.model.scan_layers=False "
                         "(the per-block intermediates of a scanned stack are stacked)")
    return [(blocks[f"encoderblock_{i}"]["hidden_state"][0],
             blocks[f"encoderblock_{i}"]["MultiHeadDotProductAttention_1"]
             ["attention_weights"][0]) for i in range(num_layers)]


def patch_attention(weights: jax.Array, prefix: int, heads: int) -> jax.Array:
    """Patch-to-patch attention ``[batch, heads', patches, patches]``, rows renormalised;
    averaged over heads when ``heads`` (the other model's head count) differs."""
    weights = weights[:, :, prefix:, prefix:].astype(jnp.float32)
    weights = weights / jnp.maximum(weights.sum(-1, keepdims=True), 1e-12)
    if weights.shape[1] != heads:
        weights = weights.mean(axis=1, keepdims=True)
    return weights


def _check_choice(options: Any, field: str, choices: tuple[str, ...], why: str) -> None:
    """Raises unless ``config.distill.<field>`` is present and one of ``choices``."""
    if field not in options:
        raise ValueError(f"config.distill.{field} is missing; method={options.method!r} needs "
                         f"it: one of {choices} ({why})")
    if options[field] not in choices:
        raise ValueError(f"config.distill.{field}={options[field]!r} is not supported; "
                         f"expected one of {choices} ({why})")


def _check_logit_options(options: Any) -> None:
    """Checks the fields that the logit loss reads only when it is traced, so that a bad value
    fails when the task is built and names the field, not later inside ``jax.grad``."""
    if options.method == "soft":
        _check_choice(options, "reduction", SCALAR_REDUCTIONS,
                      "the training step differentiates a scalar loss")
    if options.method == "deit_token":
        _check_choice(options, "token_type", distill.DISTILLATION_TYPES,
                      "what the distillation head learns from the teacher")
    if options.method == "hard" and options.get("alpha", HARD_ALPHA) != HARD_ALPHA:
        logging.warning(
            "config.distill.alpha=%r is ignored by method='hard': DeiT's hard distillation "
            "weighs labels and teacher %g : %g", options.alpha, 1 - HARD_ALPHA, HARD_ALPHA)


def load_teacher_params(path: str, model: vit.VisionTransformer,
                        step: int | None = None, grid: tuple[int, int] | None = None,
                        ema: bool = False) -> tuple[Any, int | None]:
    """A teacher's parameters and the checkpoint step they are from (None for an ``.npz``):
    from a workdir (its newest readable orbax checkpoint, or ``step``; with ``ema`` the
    moving average that checkpoint holds) or an ``.npz`` (whose position grid is ``grid``
    when given, see ``vit.load_pretrained``). Raises naming ``config.distill.teacher_model``
    when they are not of that model."""
    if path.endswith(".npz"):
        if ema:
            raise ValueError(
                f"config.distill.teacher_ema=True, but config.distill.teacher_checkpoint="
                f"{path!r} is an .npz, which holds one set of parameters; teacher_ema reads "
                "a workdir trained with config.ema_decay > 0")
        # A frozen teacher must bring its own head: a fresh one would make it uniform.
        return vit.load_pretrained(path, model, checkpoint_grid=grid,
                                   allow_new_head=False), None
    if not os.path.isdir(os.path.join(path, "checkpoints")):
        raise FileNotFoundError(
            f"config.distill.teacher_checkpoint={path!r} is neither an .npz file nor a workdir "
            "with checkpoints/ (train the teacher first with trainer.main)")
    from trainer import checkpointing

    try:
        params, step, _ = checkpointing.restore_params_with_meta(path, step, ema=ema)
    except checkpointing.MissingAverageError as error:
        raise ValueError(f"config.distill.teacher_ema=True, but {error}") from error
    image = np.zeros((1, *_image_shape(model)), np.float32)
    expected = checkpointing.params_fingerprint(
        jax.eval_shape(model.init, jax.random.key(0), image)["params"])
    saved = checkpointing.params_fingerprint(params)
    if saved != expected:
        # Flax would run a deeper checkpoint as the shallower model without a word.
        raise ValueError(
            f"config.distill.teacher_checkpoint={path!r} (step {step}) is not a checkpoint of "
            "config.distill.teacher_model: "
            + checkpointing.describe_mismatch(saved, expected, ours="teacher_model"))
    return params, step


def _image_shape(model: vit.VisionTransformer) -> tuple[int, int, int]:
    """``(height, width, channels)`` of ``model``'s input images."""
    return (*vit.model.to_pair(model.image_size, "image_size"), model.num_channels)


@register_task("distillation")
class DistillationTask(ClassificationTask):
    """The student is ``config.model``; the teacher ``config.distill.teacher_model``."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        options = config.distill
        if options.method not in METHODS:
            raise ValueError(f"config.distill.method={options.method!r} is not supported; "
                             f"expected one of {METHODS}")
        if (options.method == "deit_token") != bool(self.model.distillation_token):
            raise ValueError("config.distill.method='deit_token' and "
                             "config.model.distillation_token=True go "
                             f"together; got method={options.method!r}, distillation_token="
                             f"{self.model.distillation_token}")
        _check_logit_options(options)
        self.options = options
        self.unlabelled_split = options.get("unlabelled_split", "") or ""
        if self.unlabelled_split and options.method == "none":
            raise ValueError(
                f"config.distill.unlabelled_split={self.unlabelled_split!r} needs a teacher to "
                "learn from; distill.method='none' trains on labels alone (set the split to '')")
        if self.unlabelled_split == config.dataset.train_split:
            raise ValueError(f"config.distill.unlabelled_split={self.unlabelled_split!r} must "
                             "differ from config.dataset.train_split (the labelled examples)")
        self.feature_weight = float(options.get("feature_weight", 0.0))
        self.attention_weight = float(options.get("attention_weight", 0.0))
        if (self.feature_weight or self.attention_weight) and options.method == "none":
            raise ValueError("config.distill.feature_weight/attention_weight need a teacher; "
                             "config.distill.method='none' trains the student alone")
        if options.get("feature_loss", "mse") not in FEATURE_LOSSES:
            raise ValueError(f"config.distill.feature_loss={options.feature_loss!r} is not "
                             f"supported; expected one of {FEATURE_LOSSES}")
        self.teacher = build_vit(options.teacher_model, jnp.float32)
        if self.teacher.num_classes != self.num_classes:
            raise ValueError(f"config.distill.teacher_model has {self.teacher.num_classes} "
                             f"classes and the student {self.num_classes}: distillation "
                             "compares their logits class by class, so they must be equal")
        self._teacher_params, self._teacher_step = None, None
        self.teacher_ema = options.get("teacher_ema", False)
        if not isinstance(self.teacher_ema, bool):
            raise ValueError(f"config.distill.teacher_ema={self.teacher_ema!r} must be True "
                             "or False")
        self.teacher_grid = checkpoint_grid(options.get("teacher_checkpoint_grid"),
                                            "config.distill.teacher_checkpoint_grid")
        if self.feature_weight or self.attention_weight:
            student_grid, teacher_grid = self.model.grid_size, self.teacher.grid_size
            if student_grid != teacher_grid:
                raise ValueError(
                    f"feature/attention distillation compares patch tokens: the student's patch "
                    f"grid {student_grid} must equal the teacher's {teacher_grid}")
        self.projection = None
        if self.feature_weight and self.model.hidden_size != self.teacher.hidden_size:
            self.projection = distill.FeatureProjection(self.teacher.hidden_size)

    def train_iterator(self, process_index: int, process_count: int):
        if not self.unlabelled_split:
            return super().train_iterator(process_index, process_count)
        source = input_pipeline.PartiallyLabelled(
            common.data_source(self.config, self.config.dataset.train_split),
            common.data_source(self.config, self.unlabelled_split))
        # PartiallyLabelled adds label_weight (0 for the unlabelled examples).
        transforms = self.image_transforms(self.config.pp_train,
                                           keys=(*EXAMPLE_KEYS, "label_weight"))
        return common.train_iterator(self.config, transforms, process_index, process_count,
                                     source=source)

    def dummy_batch(self, batch_size: int) -> Batch:
        batch = super().dummy_batch(batch_size)
        if self.unlabelled_split:
            batch["label_weight"] = np.ones((batch_size,), np.float32)
        return batch

    def _mixed_targets(self, rng: jax.Array, batch: Batch):
        """Mixed images ``[B, H, W, C]``, label targets ``[B, K]`` and label weights ``[B]``
        (``None`` when every example is labelled).

        Mixup pairs labelled with unlabelled images, so the label weights are mixed as the
        targets are: the target of a mixed pair is the label distribution of its labelled
        part, weighted by that part's share (λ·w_i + (1 − λ)·w_j).
        """
        onehot = jax.nn.one_hot(batch["label"], self.num_classes)
        if "label_weight" not in batch:
            images, targets = self._mix(rng, batch["image"], onehot)
            return images, targets, None
        weight = batch["label_weight"].astype(jnp.float32)[:, None]
        images, mixed = self._mix(rng, batch["image"],
                                  jnp.concatenate([onehot * weight, weight], axis=-1))
        label_weights = mixed[:, -1]
        targets = mixed[:, :-1] / jnp.maximum(label_weights, 1e-6)[:, None]
        return images, targets, label_weights

    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        student_rng, projection_rng = jax.random.split(rng)
        params = super().init_params(student_rng, batch)
        if self.projection is None:
            return params
        dummy = jnp.zeros((1, self.model.hidden_size), jnp.float32)
        return {**params, PROJECTION: self.projection.init(projection_rng, dummy)["params"]}

    def logits(self, params: Any, images: jax.Array, rng: jax.Array | None,
               train: bool) -> jax.Array:
        return super().logits(student_only(params), images, rng, train)

    def frozen_variables(self) -> Any:
        if self.options.method == "none":
            return {}
        if self._teacher_params is None:
            self._teacher_params, self._teacher_step = load_teacher_params(
                self.options.teacher_checkpoint, self.teacher, grid=self.teacher_grid,
                ema=self.teacher_ema)
        return {"teacher": self._teacher_params}

    def checkpoint_meta(self) -> dict[str, Any]:
        if self.options.method == "none":
            return {}
        self.frozen_variables()
        return {"teacher": {"checkpoint": self.options.teacher_checkpoint,
                            "step": self._teacher_step, "ema": self.teacher_ema}}

    def resumed_frozen_variables(self, meta: dict[str, Any]) -> Any:
        """The teacher of the checkpoint's run, for a resumed run or ``trainer.evaluate``: the
        teacher's workdir may have gone on training since, and its newest step would switch
        teachers in the middle of a run."""
        saved = meta.get("teacher")
        if saved and saved.get("ema", False) != self.teacher_ema:
            # Checked before any teacher is read: the other one may not even exist.
            raise ValueError(
                f"config.distill.teacher_ema={self.teacher_ema}, but the checkpoint being "
                f"resumed or evaluated was trained with teacher_ema={saved.get('ema', False)}"
                ": use that setting, or a new workdir")
        frozen = self.frozen_variables()
        if not saved or saved.get("step") is None or saved["step"] == self._teacher_step:
            return frozen
        if saved["checkpoint"] != self.options.teacher_checkpoint:
            raise ValueError(
                f"config.distill.teacher_checkpoint={self.options.teacher_checkpoint!r}, but the "
                f"checkpoint being resumed or evaluated was trained with the teacher "
                f"{saved['checkpoint']!r} at step {saved['step']}: use that teacher_checkpoint, "
                "or a new workdir")
        logging.info("the teacher %s is at step %s now; resuming with its step %s, which "
                     "this run was trained with", saved["checkpoint"], self._teacher_step,
                     saved["step"])
        self._teacher_params, self._teacher_step = load_teacher_params(
            saved["checkpoint"], self.teacher, saved["step"], ema=self.teacher_ema)
        return {"teacher": self._teacher_params}

    def teacher_logits(self, frozen: Any, images: jax.Array) -> jax.Array:
        return self._teacher_forward(frozen, images, with_blocks=False)[0]

    def _teacher_forward(self, frozen: Any, images: jax.Array, with_blocks: bool):
        """Teacher logits (and its blocks' outputs), behind ``stop_gradient``."""
        height, width, _ = _image_shape(self.teacher)
        if images.shape[1:3] != (height, width):
            images = jax.image.resize(images, (images.shape[0], height, width, images.shape[3]),
                                      "bilinear")
        variables = {"params": frozen["teacher"]}
        if not with_blocks:
            logits = self.teacher.apply(variables, images, train=False)
            return jax.lax.stop_gradient(logits), None
        logits, state = self.teacher.apply(variables, images, train=False,
                                           mutable=["intermediates"])
        blocks = block_outputs(state, self.teacher.num_layers)
        return jax.lax.stop_gradient((logits, blocks))

    def _feature_terms(self, params: Any, student_blocks, teacher_blocks) -> dict[str, Any]:
        """The weighted feature and attention losses, by name (empty when both weights are 0)."""
        terms = {}
        s_prefix, t_prefix = self.model.num_prefix_tokens, self.teacher.num_prefix_tokens
        if self.feature_weight:
            projection = None
            if self.projection is not None:
                def projection(hidden):
                    return self.projection.apply({"params": params[PROJECTION]}, hidden)
            loss_fn = (distill.hidden_state_mse if self.options.get("feature_loss", "mse")
                       == "mse" else distill.hidden_state_cosine)
            s_layers, t_layers = len(student_blocks), len(teacher_blocks)
            losses = []
            for i, (hidden, _) in enumerate(student_blocks):
                teacher_hidden = teacher_blocks[-(-(i + 1) * t_layers // s_layers) - 1][0]
                losses.append(loss_fn(hidden[:, s_prefix:], teacher_hidden[:, t_prefix:],
                                      projection=projection))
            terms["feature_loss"] = self.feature_weight * jnp.mean(jnp.stack(losses))
        if self.attention_weight:
            student_map = patch_attention(student_blocks[-1][1], s_prefix, self.teacher.num_heads)
            teacher_map = patch_attention(teacher_blocks[-1][1], t_prefix, self.model.num_heads)
            terms["attention_loss"] = self.attention_weight * distill.attention_kl(
                student_map, teacher_map)
        return terms

    def loss(self, params: Any, batch: Batch, rng: jax.Array,
             frozen: Any) -> tuple[jax.Array, Metrics]:
        if self.options.method == "none":
            return super().loss(params, batch, rng, frozen)
        mix_rng, dropout_rng = jax.random.split(rng)
        # [batch, classes]: mixup/cutmix soft targets are kept as they are
        images, labels, label_weights = self._mixed_targets(mix_rng, batch)
        with_blocks = bool(self.feature_weight or self.attention_weight)
        teacher, teacher_blocks = self._teacher_forward(frozen, images, with_blocks)
        student_variables = {"params": student_only(params)}
        if with_blocks:
            outputs, state = self.model.apply(student_variables, images, train=True,
                                              rngs={"dropout": dropout_rng},
                                              mutable=["intermediates"])
            terms = self._feature_terms(params, block_outputs(state, self.model.num_layers),
                                        teacher_blocks)
        else:
            outputs = self.model.apply(student_variables, images, train=True,
                                       rngs={"dropout": dropout_rng})
            terms = {}
        smoothing = self.config.get("label_smoothing", 0.0)
        options = self.options
        if options.method == "deit_token":
            cls_logits, dist_logits = outputs
            loss = distill.deit_distillation_token_loss(
                cls_logits, dist_logits, teacher, labels, distillation_type=options.token_type,
                alpha=options.alpha, temperature=options.temperature,
                label_smoothing=smoothing, label_weights=label_weights)
            student = distill.deit_inference_logits(cls_logits, dist_logits)
        elif options.method == "hard":
            loss = distill.hard_distillation_loss(outputs, teacher, labels,
                                                  label_smoothing=smoothing,
                                                  label_weights=label_weights)
            student = outputs
        else:
            loss = distill.hinton_loss(outputs, teacher, labels, temperature=options.temperature,
                                       alpha=options.alpha, reduction=options.reduction,
                                       label_smoothing=smoothing, label_weights=label_weights)
            student = outputs
        metrics = {"agreement": distill.top1_agreement(student, teacher), **terms}
        if terms:
            metrics["logit_loss"] = loss
            loss = loss + sum(terms.values())
        return loss, metrics

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
        models = {"student": (self.model, student_only(params))}
        if "teacher" in frozen:
            teacher_images = np.zeros((dummy.shape[0], *_image_shape(self.teacher)),
                                      np.float32)
            models["teacher"] = (self.teacher, frozen["teacher"], teacher_images)
        return compression_report.write_report(workdir, models, dummy, final_eval)
