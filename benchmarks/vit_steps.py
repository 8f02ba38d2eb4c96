"""Our ViT training step and inference pass, built once and ready to time (no flags here, so
every benchmark can import it)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import vit
from trainer import xla_cpu
from trainer.throughput import lowered_flops
from transformer.attention import cudnn_attention_calls


def step_memory_bytes(compiled: Any) -> int | None:
    """XLA's memory analysis of a compiled step: arguments, outputs and temporaries, less
    what is aliased (donated); None where the backend has no analysis. The step's own figure
    on every backend, where a device's peak counter covers the whole process."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def device_peak_bytes() -> int | None:
    """The first device's ``peak_bytes_in_use`` (GPU/TPU; None on the CPU): the most the
    process has held on it since it started, not one step's peak."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else int(peak)


def peak_reached_since(before: int | None, after: int | None) -> int | None:
    """A device's process-wide peak ``after`` some work, when the work raised it above
    ``before``; None otherwise (an earlier, larger model's peak hides this one's)."""
    if after is None or (before is not None and after <= before):
        return None
    return after


def _jitted_step_and_forward(model: vit.VisionTransformer, tx: optax.GradientTransformation,
                             options: dict[str, Any]) -> tuple[Any, Any]:
    """``(step(params, opt_state, images, labels) -> (params, opt_state), forward(params,
    images) -> logits)``, jitted with ``options``."""

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    # The batch is an argument, as in the launcher's step and timm's: closed over, it would be
    # a constant that XLA folds into the program (the patch embedding's reshapes computed at
    # compile time, 154 MB of images in the executable for ViT-B/16 at batch 256).
    def train_step(p, state, x, y):
        grads = jax.grad(loss_fn)(p, x, y)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state

    step = jax.jit(train_step, donate_argnums=(0, 1), compiler_options=options)
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False),
                      compiler_options=options)
    return step, forward


def _optimizer() -> optax.GradientTransformation:
    return optax.adamw(1e-3, weight_decay=0.05)


def _create(name: str, image_size: int, precision: str, attention: str,
            overrides: dict[str, Any]) -> vit.VisionTransformer:
    dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    return vit.create_model(name, num_classes=1000, image_size=image_size, dtype=dtype,
                            attention_implementation=attention, **overrides)


def model_flops(name: str, batch_size: int, image_size: int, precision: str,
                attention: str = "xla",
                model_overrides: dict[str, Any] | None = None) -> tuple[float, float]:
    """``(train_flops, infer_flops)``: XLA's count of the lowered training step and inference
    pass (trainer.throughput, as the launcher counts them), lowered on shapes only.

    The model is counted without a scanned stack or rematerialisation: XLA's cost analysis
    counts a loop's body once, and recomputation is not model arithmetic.
    """
    plain = {k: v for k, v in (model_overrides or {}).items()
             if k not in ("scan_layers", "remat_policy")}
    model = _create(name, image_size, precision, attention, plain)
    images = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    params = params["params"]
    tx = _optimizer()
    step, forward = _jitted_step_and_forward(model, tx, {})
    return (lowered_flops(step, params, jax.eval_shape(tx.init, params), images, labels),
            lowered_flops(forward, params, images))


def training_step(name: str, batch_size: int, image_size: int, precision: str,
                  attention: str = "xla",
                  compiler_options: dict[str, Any] | None = None,
                  model_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our jitted AdamW training step on random data, ready to time.

    Returns ``run_step`` (one step, updating the held state; returns the new parameters to
    block on), ``forward`` (jitted inference on the batch), ``train_flops`` and
    ``infer_flops`` (XLA's count of the lowered programs), ``train_fused_attention_calls`` and
    ``infer_fused_attention_calls`` (``transformer.attention.cudnn_attention_calls``),
    ``compiled_step``, ``lowered_step_text`` (its StableHLO), ``compiler_options`` (those it
    was compiled with), ``params`` and the ``images`` batch ``[batch_size, image_size,
    image_size, 3]``. ``compiler_options`` (XLA debug options for ``jax.jit``) default to the
    launcher's (trainer.xla_cpu); ``model_overrides`` are ``vit.VisionTransformer`` fields.
    """
    model = _create(name, image_size, precision, attention, model_overrides or {})
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(batch_size, image_size, image_size, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 1000, size=(batch_size,)), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), images[:1])["params"]
    tx = _optimizer()
    opt_state = tx.init(params)
    # By default the launcher's compiler options (trainer.xla_cpu): the launcher's figures.
    options = xla_cpu.compiler_options() if compiler_options is None else compiler_options
    step_jit, forward = _jitted_step_and_forward(model, tx, options)
    train_flops, infer_flops = model_flops(name, batch_size, image_size, precision, attention,
                                           model_overrides)
    lowered_step = step_jit.lower(params, opt_state, images, labels)
    step = lowered_step.compile()
    holder = {"params": params, "opt_state": opt_state}

    def run_step():
        holder["params"], holder["opt_state"] = step(holder["params"], holder["opt_state"],
                                                     images, labels)
        return holder["params"]

    forward_compiled = forward.lower(params, images).compile()
    return {"run_step": run_step, "forward": forward_compiled,
            "train_fused_attention_calls": cudnn_attention_calls(step.as_text()),
            "infer_fused_attention_calls": cudnn_attention_calls(forward_compiled.as_text()),
            "holder": holder, "images": images, "train_flops": train_flops,
            "infer_flops": infer_flops, "compiled_step": step,
            "lowered_step_text": lowered_step.as_text(), "compiler_options": options,
            "parameters": int(sum(x.size for x in jax.tree.leaves(params)))}
