"""Checks of a training config before anything is built: clear errors naming the field."""

from __future__ import annotations

import math
from typing import Any

from trainer import optimizers

REQUIRED = ("task", "seed", "model", "dataset", "batch_size", "eval_batch_size",
            "num_train_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
            "keep_checkpoints", "optimizer", "schedule", "mesh_shape", "sharding")
POSITIVE_INTS = ("batch_size", "eval_batch_size", "num_train_steps", "log_every_steps",
                 "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints")


def validate(config: Any) -> None:
    """Raise ``ValueError`` naming the field, its value and what is expected."""
    missing = [name for name in REQUIRED if name not in config]
    if missing:
        raise ValueError(f"config is missing the field(s) {missing}")
    for name in POSITIVE_INTS:
        value = config[name]
        if not _is_positive_int(value):
            raise ValueError(f"config.{name}={value!r} must be a positive integer")
    seed = config.seed
    # The data loader's shuffle (input_pipeline.loader.EpochShuffle) takes seeds in
    # [0, 2**32) only; refused here, before anything is built, with the field named.
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"config.seed={seed!r} must be an integer >= 0 and < 2**32")
    optimizers.check_optimizer(config.optimizer)
    optimizers.check_schedule(config.schedule, config.num_train_steps)
    learning_rate = config.optimizer.get("learning_rate")
    if not _is_number(learning_rate) or learning_rate <= 0:
        raise ValueError(f"config.optimizer.learning_rate={learning_rate!r} must be > 0")
    smoothing = config.get("label_smoothing", 0.0)
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"config.label_smoothing={smoothing!r} must be in [0, 1)")
    stop = config.get("stop_after_step")
    if stop is not None and not 0 < stop <= config.num_train_steps:
        raise ValueError(
            f"config.stop_after_step={stop!r} must be in [1, num_train_steps="
            f"{config.num_train_steps}] or None")
    average_last = config.get("average_last_checkpoints", 1)
    if not _is_positive_int(average_last) or average_last > config.keep_checkpoints:
        raise ValueError(
            f"config.average_last_checkpoints={average_last!r} must be an integer in [1, "
            f"config.keep_checkpoints={config.keep_checkpoints}] (1: no average): older "
            "checkpoints than the kept ones are deleted before the final step")
    ema_decay = config.get("ema_decay", 0.0)
    if not _is_number(ema_decay) or not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"config.ema_decay={ema_decay!r} must be a number in [0, 1) (the "
                         "weight of the old average at each step, DeiT: 0.99996; 0: off)")
    layer_decay = config.optimizer.get("layer_decay", 1.0)
    if layer_decay != 1.0 and config.task not in ("classification", "distillation"):
        raise ValueError(f"config.optimizer.layer_decay={layer_decay!r} numbers a ViT's "
                         f"layers; config.task={config.task!r} trains no ViT (set it to 1)")
    aug_repeats = config.get("aug_repeats", 1)
    if not _is_int(aug_repeats) or aug_repeats < 0:
        raise ValueError(f"config.aug_repeats={aug_repeats!r} must be an integer >= 0 (copies of "
                         "each training image in a row, DeiT: 3; 0 or 1: off)")
    _validate_optimizer(config)
    _validate_mixup(config.get("mixup"))


def _is_number(value: Any) -> bool:
    """A finite int or float: NaN passes every ``x < 0`` check, and a NaN or infinite rate or
    weight would turn the first update into NaNs without an error."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return _is_int(value) and value >= 1


def _validate_optimizer(config: Any) -> None:
    accum_steps = config.optimizer.get("accum_steps", 1)
    if not _is_positive_int(accum_steps):
        raise ValueError(f"config.optimizer.accum_steps={accum_steps!r} must be an integer >= 1 "
                         "(1: no gradient accumulation)")
    # The device count is not known here; train.py also checks the split over devices.
    if config.batch_size % accum_steps:
        raise ValueError(
            f"config.optimizer.accum_steps={accum_steps} must divide config.batch_size="
            f"{config.batch_size} (the batch is split into accum_steps equal micro-batches)")
    weight_decay = config.optimizer.get("weight_decay", 0.0)
    if not _is_number(weight_decay) or weight_decay < 0:
        raise ValueError(f"config.optimizer.weight_decay={weight_decay!r} must be a number >= 0")
    # optimizers.make_optimizer clips only when grad_clip_norm is truthy (None and 0: off).
    # optax.clip_by_global_norm(c) scales gradients by c / norm when norm > c: a negative c
    # flips every update (gradient ascent) and NaN makes them all NaN, without an error.
    grad_clip_norm = config.optimizer.get("grad_clip_norm")
    if grad_clip_norm is not None and (not _is_number(grad_clip_norm) or grad_clip_norm < 0):
        raise ValueError(f"config.optimizer.grad_clip_norm={grad_clip_norm!r} must be a number "
                         ">= 0 (0 or None: no clipping)")


def _validate_mixup(mixup: Any) -> None:
    """Mixup/cutmix run under jit: a negative alpha draws a NaN mixing weight (and NaN
    targets) rather than raising, and switch_prob is compared with a uniform draw."""
    if mixup is None:
        return
    for name in ("mixup_alpha", "cutmix_alpha"):
        alpha = mixup.get(name, 0.0)
        if not _is_number(alpha) or alpha < 0:
            raise ValueError(f"config.mixup.{name}={alpha!r} must be a number >= 0 (0: off)")
    switch_prob = mixup.get("switch_prob", 0.5)
    if not _is_number(switch_prob) or not 0.0 <= switch_prob <= 1.0:
        raise ValueError(f"config.mixup.switch_prob={switch_prob!r} must be in [0, 1]")


def backend_warnings(config: Any, backend: str) -> list[str]:
    """Settings that are valid but do not do on ``backend`` what their name promises."""
    model = config.get("model", {})
    remat_policy = model.get("remat_policy", "none")
    if backend == "cpu" and remat_policy != "none" and not model.get("scan_layers", False):
        # Measured with benchmarks/vit_memory.py (its docstring: why XLA:CPU keeps them live).
        return [f"config.model.remat_policy={remat_policy!r} saves no memory on the CPU "
                "without config.model.scan_layers=True: XLA:CPU keeps the activations live "
                "(benchmarks/vit_memory.py); set scan_layers=True to recompute them"]
    return []
