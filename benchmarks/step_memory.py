"""The memory of the launcher's ViT training step for a config, compiled for abstract inputs
(no flags here, so tests can import it; ``benchmarks/vit_memory.py`` is the benchmark)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from configs.common import base_config, vit_model
from trainer import xla_cpu

VARIANTS = {  # name: (model.remat_policy, optimizer.accum_steps, model.scan_layers)
    "baseline": ("none", 1, False),
    "remat_full": ("full", 1, False),
    "remat_dots": ("dots", 1, False),
    "accum4": ("none", 4, False),
    "scan": ("none", 1, True),
    "scan_remat_full": ("full", 1, True),
    "scan_remat_dots": ("dots", 1, True),
}


def step_config(model: str, image_size: int, variant: str, mixed_precision: bool = False):
    """The launcher config of a ViT classification step for ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} is not one of {sorted(VARIANTS)}")
    remat_policy, accum_steps, scan_layers = VARIANTS[variant]
    config = base_config()
    config.task = "classification"
    config.model = vit_model(model, num_classes=1000, image_size=image_size,
                             remat_policy=remat_policy, scan_layers=scan_layers)
    config.optimizer.accum_steps = accum_steps
    config.mixed_precision = mixed_precision
    return config


def step_memory_bytes(config: Any, batch_size: int) -> int:
    """XLA's memory estimate of the compiled, donated train step for ``batch_size``."""
    from trainer.optimizers import make_optimizer
    from trainer.steps import init_state, make_train_step
    from trainer.tasks import create_task

    accum_steps = int(config.optimizer.get("accum_steps", 1))
    if batch_size % accum_steps:
        raise ValueError(f"batch_size={batch_size} must be a multiple of accum_steps="
                         f"{accum_steps}")
    task = create_task(config)
    tx, schedule = make_optimizer(config, total_steps=1000)
    dummy = task.dummy_batch(1)
    state = jax.eval_shape(lambda: init_state(task, tx, 0, dummy))
    batch = {key: jax.ShapeDtypeStruct((batch_size, *np.shape(value)[1:]),
                                       jnp.asarray(value).dtype)
             for key, value in dummy.items()}
    step = jax.jit(make_train_step(task, tx, schedule, accum_steps), donate_argnums=(0,),
                   compiler_options=xla_cpu.compiler_options())
    analysis = step.lower(state, batch, task.frozen_variables()).compile().memory_analysis()
    if analysis is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no memory analysis")
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
