"""The train state and the jitted train and eval steps."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from trainer.tasks.base import Task


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint must hold to resume bitwise.

    Attributes:
      step: number of updates done, int32 scalar.
      params: trainable parameters.
      opt_state: optax state.
      rng: raw PRNG key data ``[2]`` uint32; step ``s`` uses ``fold_in(rng, s)``, so the
        randomness of a step does not depend on how the run got there.
      ema_params: the exponential moving average of ``params`` (``config.ema_decay``, timm's
        and DeiT's model EMA), the same tree; None without one, so that a state without it
        has the leaves, and checkpoints the layout, it had before the field existed.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None


def init_state(task: Task, tx: optax.GradientTransformation, seed: int,
               batch: dict[str, Any], ema: bool = False) -> TrainState:
    """The state before the first step; with ``ema`` the average starts at the parameters."""
    init_rng, train_rng = jax.random.split(jax.random.key(seed))
    params = task.init_params(init_rng, batch)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(train_rng),
        ema_params=params if ema else None,
    )


def _split_micro_batches(batch: dict[str, jax.Array], accum_steps: int):
    """``[batch, ...]`` -> ``[accum_steps, batch // accum_steps, ...]``.

    Micro-batch ``i`` takes rows ``i, i + accum_steps, ...``: with the batch split over devices
    in contiguous blocks, every device keeps its own rows and nothing moves between devices.
    """

    def split(x):
        return jnp.swapaxes(x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]),
                            0, 1)

    return jax.tree.map(split, batch)


def _micro_batch_scales(task: Task, micro_batches: dict[str, jax.Array], accum_steps: int):
    """``[accum_steps]`` scale factors with mean 1 from ``task.loss_weight`` of each
    micro-batch (a dict of them, one per loss term, when it returns a dict).

    Equal weights give exactly 1.0, so the default (same-size micro-batches) stays the plain
    mean of the micro-batches.
    """

    def normalise(weights: jax.Array) -> jax.Array:
        weights = jnp.asarray(weights, jnp.float32)
        return weights * accum_steps / jnp.maximum(jnp.sum(weights), 1e-12)

    weights = jax.vmap(task.loss_weight)(micro_batches)
    if isinstance(weights, dict):
        return {name: normalise(w) for name, w in weights.items()}
    return normalise(weights)


def make_train_step(task: Task, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    accum_steps: int = 1, ema_decay: float = 0.0):
    """``(state, batch, frozen) -> (state, metrics)``; metrics are float32 scalars.

    A state with ``ema_params`` has them moved towards the updated parameters after every
    update: ``ema = ema_decay * ema + (1 - ema_decay) * params`` (timm's ``ModelEmaV2``, as
    DeiT uses it, with no warm-up of the decay).

    With ``accum_steps > 1`` the batch is split into micro-batches whose losses, metrics and
    gradients are averaged with the weights ``task.loss_weight`` (the number of examples or
    tokens each micro-batch's mean is over), so the update equals the one-batch update. A
    task whose loss sums terms averaged over different counts (examples for one, tokens for
    another) gives a weight per term, and each term is weighted by its own (see
    ``Task.loss_weight``).

    ``metrics["nonfinite_state"]`` counts the NaN/Inf entries of the *updated* parameters and
    optimizer state: the loss only describes the parameters before the update, and the loop
    must not checkpoint a state that an overflowing update has broken (a gradient of 1e20
    leaves the parameters finite but Adam's second moment infinite, and every later update 0).
    """

    def loss_and_grads(params, batch, rng, frozen):
        return jax.value_and_grad(task.loss, has_aux=True)(params, batch, rng, frozen)

    def scaled_loss_and_grads(params, micro, rng, frozen, scales):
        """``(loss, metrics, gradients)`` of one micro-batch, each term times its scale."""

        def objective(params):
            loss, extra = task.loss(params, micro, rng, frozen)
            if not isinstance(scales, dict):
                scaled = loss * scales.astype(loss.dtype)
                return scaled, (scaled, extra)
            missing = sorted(set(scales) - set(extra))
            if missing:
                raise KeyError(f"{type(task).__name__}.loss_weight weighs the loss terms "
                               f"{missing}, which its loss does not return among its metrics "
                               f"{sorted(extra)}")
            # The named terms are parts of the loss: each is reweighted from the examples'
            # share (1: equal-sized micro-batches) to its own count's; the rest of the loss
            # keeps the examples' weight.
            scaled = loss + sum(extra[name] * (scale - 1.0) for name, scale in scales.items())
            return scaled, (scaled, extra)

        (_, (loss, extra)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        if isinstance(scales, dict):  # a term's metric by its weight, the rest by examples
            extra = {name: value * jnp.asarray(scales.get(name, 1.0), value.dtype)
                     for name, value in extra.items()}
        else:
            extra = jax.tree.map(lambda x: x * scales.astype(x.dtype), extra)
        return loss, extra, grads

    def train_step(state: TrainState, batch: dict[str, jax.Array], frozen: Any):
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if accum_steps == 1:
            (loss, extra), grads = loss_and_grads(state.params, batch, rng, frozen)
        else:
            micro_batches = _split_micro_batches(batch, accum_steps)
            scales = _micro_batch_scales(task, micro_batches, accum_steps)

            def accumulate(carry, inputs):
                index, micro, scale = inputs
                scaled = scaled_loss_and_grads(state.params, micro,
                                               jax.random.fold_in(rng, index), frozen, scale)
                return jax.tree.map(jnp.add, carry, scaled), None

            zeros = jax.tree.map(
                jnp.zeros_like,
                jax.eval_shape(lambda: loss_and_grads(
                    state.params, jax.tree.map(lambda x: x[0], micro_batches), rng, frozen)),
            )
            zeros = (zeros[0][0], zeros[0][1], zeros[1])
            (loss, extra, grads), _ = jax.lax.scan(
                accumulate, zeros, (jnp.arange(accum_steps), micro_batches, scales))
            loss, extra, grads = jax.tree.map(lambda x: x / accum_steps, (loss, extra, grads))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # optax's NaN/Inf count of an update tree, applied to the new state itself.
        _, not_finite = optax.transforms.skip_not_finite((params, opt_state), state.step, None)
        metrics = {
            "loss": loss,
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
            "grad_norm": optax.tree.norm(grads),
            "nonfinite_state": not_finite["num_not_finite"],
            **extra,
        }
        ema_params = state.ema_params
        if ema_params is not None:
            ema_params = optax.incremental_update(params, ema_params, 1.0 - ema_decay)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  ema_params=ema_params)
        return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

    return train_step


def make_eval_step(task: Task):
    """``(params, batch, frozen) -> {name: [sum, count]}``."""

    def eval_step(params: Any, batch: dict[str, jax.Array], frozen: Any):
        return task.eval_sums(params, batch, frozen)

    return eval_step
