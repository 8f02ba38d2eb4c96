"""Pieces shared by tasks: model construction from config, losses, data plumbing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import optax

import input_pipeline

Batch = dict[str, Any]


def computation_dtype(config: Any) -> Any:
    """bfloat16 computation (float32 parameters) when ``config.mixed_precision``."""
    return jnp.bfloat16 if config.get("mixed_precision", False) else jnp.float32


def model_overrides(model_config: Any, reserved: tuple[str, ...]) -> dict[str, Any]:
    """``config.model`` fields other than the reserved ones, as constructor overrides."""
    return {k: v for k, v in model_config.items() if k not in reserved}


def smoothed_cross_entropy(logits: jax.Array, onehot: jax.Array,
                           label_smoothing: float) -> jax.Array:
    """Per-example cross-entropy ``[...]`` against label-smoothed targets, in float32."""
    targets = onehot.astype(jnp.float32)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def data_source(config: Any, split: str) -> Any:
    dataset = config.dataset
    return input_pipeline.get_source(
        dataset.name, split, dataset.get("data_dir"), **dict(dataset.get("source_kwargs", {}))
    )


def train_iterator(config: Any, transforms: list, process_index: int,
                   process_count: int, source: Any = None,
                   **loader_options: Any) -> Iterator[Batch]:
    """Training batches of ``source`` (default: ``config.dataset.train_split``)."""
    return input_pipeline.make_train_loader(
        source if source is not None else data_source(config, config.dataset.train_split),
        global_batch_size=config.batch_size,
        transforms=transforms,
        seed=config.seed,
        process_index=process_index,
        process_count=process_count,
        worker_count=config.get("input_workers", 0),
        aug_repeats=config.get("aug_repeats", 1),
        **loader_options,
    )


def eval_batches(config: Any, transforms: list, process_index: int,
                 process_count: int) -> Iterator[Batch]:
    return input_pipeline.make_eval_batches(
        data_source(config, config.dataset.eval_split),
        global_batch_size=config.eval_batch_size,
        transforms=transforms,
        process_index=process_index,
        process_count=process_count,
    )
