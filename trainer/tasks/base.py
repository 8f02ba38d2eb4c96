"""The task interface: what the training loop needs to know about an experiment.

A task builds its model and data from the config and supplies the loss and the evaluation
sums; the loop (``trainer.train``) never looks inside. Adding a task means writing one class
and decorating it with ``@register_task("name")`` — the loop does not change.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Batch = dict[str, Any]
Metrics = dict[str, jax.Array]

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a task under ``config.task = name``."""

    def register(cls: type[Task]) -> type[Task]:
        _TASKS[name] = cls
        cls.name = name
        return cls

    return register


def create_task(config: Any) -> Task:
    """The task named by ``config.task``."""
    # Importing the task modules registers them.
    from trainer.tasks import (  # noqa: F401
        classification,
        distillation,
        sentence_distillation,
        seq2seq,
    )

    if config.task not in _TASKS:
        close = difflib.get_close_matches(str(config.task), _TASKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"task={config.task!r} is unknown{hint}; known: {sorted(_TASKS)}")
    return _TASKS[config.task](config)


class Task:
    """Base class. Subclasses set ``self.model`` in ``__init__`` and implement the methods.

    Batches are dicts of arrays with a leading ``[batch]`` dimension; evaluation batches also
    carry ``mask`` ``[batch]`` (1 for real examples, 0 for padding of the last batch).
    """

    name = "base"
    model: nn.Module

    def __init__(self, config: Any) -> None:
        self.config = config

    # ---- data -------------------------------------------------------------------------------
    def train_iterator(self, process_index: int, process_count: int) -> Iterator[Batch]:
        """Endless host-local training batches with ``get_state``/``set_state``."""
        raise NotImplementedError

    def eval_batches(self, process_index: int, process_count: int) -> Iterator[Batch]:
        """One pass over the host's shard of the eval split, last batch padded and masked."""
        raise NotImplementedError

    def dummy_batch(self, batch_size: int) -> Batch:
        """A batch of the right shapes and dtypes, for initialisation and shape checks."""
        raise NotImplementedError

    # ---- model ------------------------------------------------------------------------------
    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        """Trainable parameters for ``batch``'s shapes."""
        raise NotImplementedError

    def pretrained_params(self, params: Any) -> Any | None:
        """Parameters to start from (host-side, fresh runs only) instead of the random
        initialisation, e.g. a pretrained checkpoint for fine-tuning; None keeps the random
        initialisation. ``params`` holds the initialisation's shapes and dtypes
        (``jax.ShapeDtypeStruct`` leaves), not its values; the result must have its tree."""
        return None

    def frozen_variables(self) -> Any:
        """Non-trainable inputs of the loss (a teacher's parameters); never checkpointed."""
        return {}

    def checkpoint_meta(self) -> dict[str, Any]:
        """JSON entries saved with every checkpoint, describing what ``frozen_variables``
        were made from (e.g. a teacher's checkpoint step), for ``resumed_frozen_variables``."""
        return {}

    def resumed_frozen_variables(self, meta: dict[str, Any]) -> Any:
        """``frozen_variables`` for a run resumed from a checkpoint with ``meta``: the same
        ones it was trained with, or a ValueError saying why they cannot be had."""
        return self.frozen_variables()

    def loss(self, params: Any, batch: Batch, rng: jax.Array,
             frozen: Any) -> tuple[jax.Array, Metrics]:
        """Scalar training loss (mean over the batch) and extra scalar metrics."""
        raise NotImplementedError

    def loss_weight(self, batch: Batch) -> jax.Array:
        """How many items ``loss``'s mean over ``batch`` is taken over, a float32 scalar.

        Gradient accumulation weighs each micro-batch's loss, metrics and gradients by it, so
        that the accumulated step equals the step on the whole batch. The default, the
        number of examples, fits losses that are means over examples; a task whose loss is a
        mean over something else (non-padding tokens) returns that count.

        A loss that adds terms averaged over different counts (a mean over sentences plus a
        mean over tokens) returns a dict ``{metric name: count}`` instead, naming entries of
        ``loss``'s metrics that are terms added into the loss. Each named term is then weighted
        by its own count; the rest of the loss and the metrics not named by the number of
        examples.
        """
        return jnp.asarray(self.example_count(batch), jnp.float32)

    def eval_sums(self, params: Any, batch: Batch, frozen: Any) -> Metrics:
        """Per-metric ``[2]`` arrays ``(sum over real examples, number of them)``."""
        raise NotImplementedError

    def generation_metrics(self, params: Any, frozen: Any, mesh: Any, process_index: int,
                           process_count: int) -> dict[str, float]:
        """Evaluation that is not a sum over batches (e.g. BLEU of decoded outputs)."""
        return {}

    def on_train_end(self, params: Any, frozen: Any, workdir: str,
                     final_eval: dict[str, float]) -> dict[str, Any] | None:
        """Called once when training finishes, on every process, with the trained parameters
        (gathered whole onto every host when they are spread over several); may write
        reports into the workdir (process 0) and return an entry for the summary."""
        return None

    def example_count(self, batch: Batch) -> int:
        return int(next(iter(batch.values())).shape[0])


def masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``(sum of values where mask, count of mask)`` as a float32 ``[2]`` array."""
    mask = mask.astype(jnp.float32)
    return jnp.stack([jnp.sum(values.astype(jnp.float32) * mask), jnp.sum(mask)])


def zeros_like_batch(spec: dict[str, tuple[tuple[int, ...], Any]]) -> Batch:
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}
