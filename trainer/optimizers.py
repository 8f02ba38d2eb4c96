"""optax optimizers and learning-rate schedules built from a config.

``config.optimizer``: ``name`` (``adamw``/``adam``/``sgd``), ``learning_rate``, ``b1``, ``b2``,
``eps``, ``momentum``, ``nesterov``, ``weight_decay``, ``grad_clip_norm``, ``accum_steps``,
``layer_decay``.
``weight_decay`` (kernels only) is decoupled and scaled by the learning rate for ``adamw`` and
``sgd``, and an L2 term added to the gradient for ``adam``. ``layer_decay`` (a ViT's
layer-wise learning-rate decay; 1: off) scales each encoder block's updates by
``layer_decay ** (num_layers + 1 - layer)``.
``config.schedule``: ``name`` (``warmup_cosine``, ``warmup_linear``, ``warmup_rsqrt``,
``constant``, ``timm_cosine``), ``warmup_steps`` (a linear warmup from 0 for every schedule
but ``timm_cosine``), ``end_learning_rate_factor``; for ``timm_cosine`` also
``steps_per_epoch``, ``warmup_start_factor`` and ``lag_epochs`` (see ``make_schedule``).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("warmup_cosine", "warmup_linear", "warmup_rsqrt", "constant", "timm_cosine")


def check_schedule(schedule_config: Any, total_steps: int) -> None:
    """Raises ``ValueError`` naming ``config.schedule``'s field when it cannot be built."""
    name = schedule_config.get("name")
    if name not in SCHEDULES:
        raise ValueError(
            f"config.schedule.name={name!r} is not supported; expected one of {SCHEDULES}")
    warmup = schedule_config.get("warmup_steps", 0)
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ValueError(f"config.schedule.warmup_steps={warmup!r} must be an integer >= 0")
    # warmup_rsqrt decays from the end of warmup on, however long the run; the others reach
    # their peak at warmup_steps and must then decay within num_train_steps.
    if (name in ("warmup_cosine", "warmup_linear", "timm_cosine") and total_steps > 0
            and warmup >= total_steps):
        raise ValueError(f"config.schedule.warmup_steps={warmup} must be in [0, "
                         f"num_train_steps={total_steps}) for schedule {name!r}")
    end_factor = schedule_config.get("end_learning_rate_factor", 0.0)
    if (not isinstance(end_factor, (int, float)) or isinstance(end_factor, bool)
            or not 0 <= end_factor < math.inf):  # NaN and inf fail here too
        raise ValueError(f"config.schedule.end_learning_rate_factor={end_factor!r} must be a "
                         "number >= 0 (the final learning rate over the peak)")
    if name == "timm_cosine":
        _check_timm_cosine(schedule_config)


def _check_timm_cosine(schedule_config: Any) -> None:
    per_epoch = schedule_config.get("steps_per_epoch")
    if not isinstance(per_epoch, int) or isinstance(per_epoch, bool) or per_epoch < 1:
        raise ValueError(f"config.schedule.steps_per_epoch={per_epoch!r} must be an integer "
                         ">= 1 (schedule 'timm_cosine' changes the rate once per epoch)")
    start = schedule_config.get("warmup_start_factor", 0.0)
    if (not isinstance(start, (int, float)) or isinstance(start, bool)
            or not 0 <= start < math.inf):
        raise ValueError(f"config.schedule.warmup_start_factor={start!r} must be a number "
                         ">= 0 (the first epoch's rate over the peak; DeiT: 1e-6 / lr)")
    lag = schedule_config.get("lag_epochs", 0)
    if not isinstance(lag, int) or isinstance(lag, bool) or lag < 0:
        raise ValueError(f"config.schedule.lag_epochs={lag!r} must be an integer >= 0 (DeiT's "
                         "main.py: 1, timm's train.py: 0)")


def check_optimizer(optimizer_config: Any) -> None:
    """Raises ``ValueError`` naming ``config.optimizer``'s field when it is not supported."""
    name = optimizer_config.get("name")
    if name not in OPTIMIZERS:
        raise ValueError(
            f"config.optimizer.name={name!r} is not supported; expected one of {OPTIMIZERS}")
    layer_decay = optimizer_config.get("layer_decay", 1.0)
    if (not isinstance(layer_decay, (int, float)) or isinstance(layer_decay, bool)
            or not 0 < layer_decay <= 1):  # NaN fails here too
        raise ValueError(f"config.optimizer.layer_decay={layer_decay!r} must be a number in "
                         "(0, 1] (a ViT's layer-wise learning-rate decay, e.g. 0.65; 1: off)")


def make_schedule(schedule_config: Any, base_learning_rate: float,
                  total_steps: int) -> optax.Schedule:
    """Learning rate per step.

    ``warmup_rsqrt`` is the schedule of "Attention Is All You Need" (eq. 3) scaled so that it
    peaks at ``base_learning_rate`` at the end of warmup, written as flax's examples/wmt:
    lr·min(1, step/warmup)·√(warmup/max(step, warmup)), which is 0 at step 0. With
    ``warmup_steps=0`` it is lr·√(1/max(step, 1)): the peak from step 0, as the other schedules.
    """
    check_schedule(schedule_config, total_steps)
    name = schedule_config.name
    warmup = int(schedule_config.get("warmup_steps", 0))
    end_factor = float(schedule_config.get("end_learning_rate_factor", 0.0))
    if name == "timm_cosine":
        return _timm_cosine(schedule_config, base_learning_rate, total_steps)
    if name == "constant":
        constant = optax.constant_schedule(base_learning_rate)
        if warmup == 0:
            return constant
        return optax.join_schedules(
            [optax.linear_schedule(0.0, base_learning_rate, warmup), constant], [warmup])
    if name == "warmup_rsqrt":
        # No division by zero: the ramp step/warmup exists only when warmup > 0, and the
        # decay divides by max(step, warmup, 1). (Clamping the step to 1 instead, as before,
        # gave lr(0) = lr(1) = lr/warmup: the only schedule that did not warm up from 0.)
        decay_from = max(warmup, 1)

        def rsqrt(step):
            step = jnp.asarray(step, jnp.float32)
            ramp = jnp.minimum(1.0, step / warmup) if warmup else 1.0
            decay = jnp.sqrt(decay_from / jnp.maximum(step, decay_from))
            return base_learning_rate * ramp * decay

        return rsqrt
    decay_steps = max(total_steps - warmup, 1)
    end_value = base_learning_rate * end_factor
    if name == "warmup_cosine":
        decay = optax.cosine_decay_schedule(base_learning_rate, decay_steps,
                                            alpha=end_factor)
    else:
        decay = optax.linear_schedule(base_learning_rate, end_value, decay_steps)
    if warmup == 0:
        return decay
    warm = optax.linear_schedule(0.0, base_learning_rate, warmup)
    return optax.join_schedules([warm, decay], [warmup])


def _timm_cosine(schedule_config: Any, base_learning_rate: float,
                 total_steps: int) -> optax.Schedule:
    """timm's ``CosineLRScheduler`` stepped once per epoch (DeiT's schedule), rate per step.

    With ``t`` the epoch, ``W`` the warmup epochs (``warmup_steps / steps_per_epoch``) and
    ``T`` the epochs of the run (``total_steps / steps_per_epoch``), timm's rate is
    ``start + t·(peak - start)/W`` for ``t < W`` and ``end + (peak - end)·(1 + cos(πt/T))/2``
    after (``warmup_prefix=False``: the cosine counts from epoch 0 and the warmup replaces its
    first epochs), with ``start``/``end`` the peak times ``warmup_start_factor`` /
    ``end_learning_rate_factor``. Every step of epoch ``e`` takes the rate of
    ``t = max(e - lag_epochs, 0)``: DeiT's ``main.py`` calls ``lr_scheduler.step(epoch)``
    after epoch ``epoch``, so epoch ``e`` trains at timm's rate of ``e - 1`` (``lag_epochs=1``);
    timm's ``train.py`` steps with ``epoch + 1`` (``lag_epochs=0``).

    Written here because optax's schedules change the rate every step and count the cosine
    from the end of the warmup (``warmup_cosine``).
    """
    per_epoch = schedule_config.steps_per_epoch
    lag = schedule_config.get("lag_epochs", 0)
    warmup_epochs = schedule_config.get("warmup_steps", 0) / per_epoch
    epochs = max(total_steps, 1) / per_epoch
    start = base_learning_rate * float(schedule_config.get("warmup_start_factor", 0.0))
    end = base_learning_rate * float(schedule_config.get("end_learning_rate_factor", 0.0))

    def rate(step):
        epoch = jnp.maximum(jnp.asarray(step, jnp.int32) // per_epoch - lag, 0)
        t = jnp.minimum(epoch.astype(jnp.float32), epochs)
        cosine = end + 0.5 * (base_learning_rate - end) * (1 + jnp.cos(jnp.pi * t / epochs))
        if not warmup_epochs:
            return cosine
        ramp = start + t * (base_learning_rate - start) / warmup_epochs
        return jnp.where(t < warmup_epochs, ramp, cosine)

    return rate


def weight_decay_mask(params: Any) -> Any:
    """True for weight matrices only: no decay on biases, norms, embeddings and tokens.

    Every leaf named ``kernel`` decays (dense, attention and patch-embedding kernels); the
    rest — ``bias``, LayerNorm ``scale``, ``embedding`` tables, ``pos_embedding``, ``cls`` —
    does not, as timm's ``param_groups_weight_decay`` for DeiT (every 1-D leaf and the
    tokens) and big_vision's ViT configs (``.*/kernel`` only). BERT's optimizer excludes only
    biases and LayerNorm and so decays its embedding tables, which are not decayed here.
    """
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})


def _vit_layer(path: tuple[str, ...], num_layers: int) -> int | None:
    """The layer of a ViT parameter for the layer-wise decay, as timm's
    ``param_groups_layer_decay`` numbers them: 0 for the patch embedding, class and
    distillation tokens and position table; ``i + 1`` for ``encoderblock_i``; ``num_layers +
    1`` for the rest (final norm, heads). None for a scanned stack (one leaf for all blocks)."""
    for name in path:
        if name == "encoderblock":
            return None
        if name.startswith("encoderblock_"):
            return int(name.removeprefix("encoderblock_")) + 1
        if name in ("embedding", "cls", "dist_token", "posembed_input"):
            return 0
    return num_layers + 1


def layer_decay_scales(params: Any, layer_decay: float) -> Any:
    """The tree of ``layer_decay ** (num_layers + 1 - layer)`` per leaf of a ViT's parameters
    (an array along the stack's leading axis for scanned blocks), with the layers of
    ``_vit_layer``: BEiT's layer-wise learning-rate decay, timm's ``--layer-decay``.

    Raises ``ValueError`` naming ``config.optimizer.layer_decay`` when ``params`` hold no ViT
    encoder blocks (``Transformer/encoderblock_<i>`` or a scanned ``encoderblock``).
    """
    flat = traverse_util.flatten_dict(params)
    numbered = {int(n.removeprefix("encoderblock_")) for path in flat for n in path
                if n.startswith("encoderblock_")}
    stacked = [leaf.shape[0] for path, leaf in flat.items() if "encoderblock" in path]
    if not numbered and not stacked:
        raise ValueError(
            f"config.optimizer.layer_decay={layer_decay} needs a ViT's encoder blocks "
            "(parameters under Transformer/encoderblock_<i>); this model has none: set it to 1")
    num_layers = max(numbered) + 1 if numbered else stacked[0]
    scales = {}
    for path, leaf in flat.items():
        layer = _vit_layer(path, num_layers)
        if layer is None:  # scanned: block i along the leading axis
            per_block = layer_decay ** (num_layers - jnp.arange(num_layers, dtype=jnp.float32))
            scales[path] = per_block.reshape((num_layers,) + (1,) * (leaf.ndim - 1))
        else:
            scales[path] = jnp.float32(layer_decay ** (num_layers + 1 - layer))
    return traverse_util.unflatten_dict(scales)


def scale_by_layer_decay(layer_decay: float) -> optax.GradientTransformation:
    """Multiplies each update by ``layer_decay_scales``; placed after the learning rate, it
    is a learning rate per layer, weight decay included, as timm's parameter groups are.
    (Not in optax, which has no notion of a model's layers.) Its ``init`` checks the tree."""

    def init(params):
        layer_decay_scales(params, layer_decay)  # raises now for a model without blocks
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        scales = layer_decay_scales(updates, layer_decay)
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(init, update)


def make_optimizer(config: Any, total_steps: int) -> tuple[optax.GradientTransformation,
                                                           optax.Schedule]:
    """The optimizer of ``config.optimizer`` with the schedule of ``config.schedule``.

    Gradient accumulation (``optimizer.accum_steps``) happens inside the train step, over
    micro-batches of one global batch (``trainer.steps``), so a step is always one update.
    """
    check_optimizer(config.optimizer)
    opt = config.optimizer
    name = opt.name
    schedule = make_schedule(config.schedule, float(opt.learning_rate), total_steps)
    chain = []
    if opt.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
    weight_decay = float(opt.get("weight_decay", 0.0))
    if weight_decay and name == "adam":
        # L2 regularisation: wd·w added to the gradient before Adam's moments, as in
        # torch.optim.Adam (Adam with decoupled decay is adamw).
        chain.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    if name in ("adamw", "adam"):
        chain.append(optax.scale_by_adam(b1=float(opt.get("b1", 0.9)),
                                         b2=float(opt.get("b2", 0.999)),
                                         eps=float(opt.get("eps", 1e-8))))
    else:
        momentum = float(opt.get("momentum", 0.9))
        if momentum:
            chain.append(optax.trace(decay=momentum, nesterov=bool(opt.get("nesterov", False))))
    if weight_decay and name != "adam":
        # Decoupled decay (AdamW), scaled by the whole learning rate as in optax.adamw and
        # PyTorch's AdamW. big_vision adds it after ``optax.scale(lr)``, so there it follows
        # the schedule's shape but not the base rate: its wd values are not this one's.
        chain.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    chain.append(optax.scale_by_learning_rate(schedule))
    layer_decay = float(opt.get("layer_decay", 1.0))
    if layer_decay != 1.0:
        chain.append(scale_by_layer_decay(layer_decay))
    return optax.chain(*chain), schedule
