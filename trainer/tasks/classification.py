"""Image classification with a Vision Transformer."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import distill
import input_pipeline
import vit
from trainer.tasks import common
from trainer.tasks.base import Batch, Metrics, Task, masked_sum, register_task

# The example keys the task reads; every other TFDS feature is dropped before batching.
# (Distillation's label_weight comes from input_pipeline.PartiallyLabelled, which keeps it.)
EXAMPLE_KEYS = ("image", "label")


def build_vit(model_config: Any, dtype: Any) -> vit.VisionTransformer:
    """``vit.create_model(config.model.name, config.model.num_classes, **other fields)``."""
    overrides = common.model_overrides(model_config, reserved=("name", "num_classes"))
    return vit.create_model(model_config.name, model_config.num_classes, dtype=dtype,
                            **overrides)


def check_image_batch(batch: Batch, model: vit.VisionTransformer, where: str) -> None:
    """Host-side checks of an image batch, failing early with what was expected."""
    images, labels = batch["image"], batch["label"]
    height, width = (model.image_size,) * 2 if isinstance(model.image_size, int) \
        else model.image_size
    expected = (height, width, model.num_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"{where}: images must be [batch, {height}, {width}, {model.num_channels}] "
            f"(model image_size={model.image_size}, num_channels={model.num_channels}); got "
            f"{tuple(images.shape)} — check the preprocessing string's resize/crop size"
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{where}: images must be float (after value_range/normalize); got "
                         f"{images.dtype}")
    labels = np.asarray(labels)
    real = labels if "mask" not in batch else labels[np.asarray(batch["mask"]) > 0]
    if real.size and (real.min() < 0 or real.max() >= model.num_classes):
        raise ValueError(
            f"{where}: labels must be in [0, num_classes={model.num_classes}); got values in "
            f"[{real.min()}, {real.max()}]"
        )


def checkpoint_grid(value: Any, field: str) -> tuple[int, int] | None:
    """A config's position grid ``(height, width)`` of an ``.npz`` checkpoint (``None``:
    recorded in the file, else square), checked here so that a typo names ``field``."""
    if value is None:
        return None
    grid = tuple(value) if isinstance(value, (tuple, list)) else None
    if grid is None or len(grid) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in grid):
        raise ValueError(f"{field}={value!r} must be the checkpoint's position grid "
                         "(height, width) in patches, two positive integers, or None")
    return grid


@register_task("classification")
class ClassificationTask(Task):
    """Softmax cross-entropy with label smoothing and optional mixup/cutmix on device.

    Config: ``model`` (ViT name, ``num_classes`` and field overrides), ``dataset``
    (``name``, ``train_split``, ``eval_split``, ``data_dir``, ``source_kwargs``),
    ``pp_train``/``pp_eval`` (preprocessing strings), ``label_smoothing``,
    ``mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``switch_prob``).
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.model = build_vit(config.model, common.computation_dtype(config))
        self.num_classes = config.model.num_classes

    def image_transforms(self, spec: str, keys: tuple[str, ...] = EXAMPLE_KEYS) -> list:
        """The preprocessing ``spec``, then only ``keys`` of each example.

        TFDS image datasets carry features the task never reads: strings (cifar10's ``id``,
        ImageNet's and the Oxford sets' ``file_name``), which JAX refuses, and variable-size
        arrays (oxford_iiit_pet's ``segmentation_mask``), which cannot be batched at all; so
        they are dropped per example, before the batcher sees them.
        """
        return [*input_pipeline.parse_preprocess(spec), input_pipeline.Keep(*keys)]

    def train_iterator(self, process_index: int, process_count: int):
        return common.train_iterator(self.config, self.image_transforms(self.config.pp_train),
                                     process_index, process_count)

    def eval_batches(self, process_index: int, process_count: int):
        return common.eval_batches(self.config, self.image_transforms(self.config.pp_eval),
                                   process_index, process_count)

    def check_batch(self, batch: Batch, where: str) -> None:
        check_image_batch(batch, self.model, where)

    def dummy_batch(self, batch_size: int) -> Batch:
        height, width = vit.model.to_pair(self.model.image_size, "image_size")
        return {
            "image": np.zeros((batch_size, height, width, self.model.num_channels), np.float32),
            "label": np.zeros((batch_size,), np.int32),
        }

    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        return self.model.init({"params": rng}, batch["image"], train=False)["params"]

    def pretrained_params(self, params: Any) -> Any | None:
        """``config.init_checkpoint``: an official-layout ``.npz`` (head and position
        embeddings adapted to this model by ``vit.load_pretrained``; its position grid is
        ``config.init_checkpoint_grid`` when given; ``config.init_new_head`` starts a new
        head even when the checkpoint's fits)."""
        path = self.config.get("init_checkpoint")
        if not path:
            return None
        grid = checkpoint_grid(self.config.get("init_checkpoint_grid"),
                               "config.init_checkpoint_grid")
        new_head = self.config.get("init_new_head", False)
        if not isinstance(new_head, bool):
            raise ValueError(f"config.init_new_head={new_head!r} must be True or False")
        return vit.load_pretrained(path, self.model, checkpoint_grid=grid, new_head=new_head)

    def _mix(self, rng: jax.Array, images: jax.Array, onehot: jax.Array):
        mixup = self.config.get("mixup", {})
        if not (mixup.get("mixup_alpha", 0.0) or mixup.get("cutmix_alpha", 0.0)):
            return images, onehot
        return input_pipeline.mixup_cutmix(
            rng, images, onehot,
            mixup_alpha=float(mixup.get("mixup_alpha", 0.0)),
            cutmix_alpha=float(mixup.get("cutmix_alpha", 0.0)),
            switch_prob=float(mixup.get("switch_prob", 0.5)),
        )

    def logits(self, params: Any, images: jax.Array, rng: jax.Array | None,
               train: bool) -> jax.Array:
        rngs = {"dropout": rng} if train else {}
        out = self.model.apply({"params": params}, images, train=train, rngs=rngs)
        if isinstance(out, tuple):
            # A model with a distillation token trained on labels alone (e.g. a distilled
            # DeiT fine-tuned): both heads learn through their average, the prediction the
            # model makes at eval, as timm's DeiT does outside distilled training. Training
            # the class head alone would leave head_dist at its initial values, and the
            # evaluated average would differ from the model trained.
            out = distill.deit_inference_logits(*out)
        return out

    def loss(self, params: Any, batch: Batch, rng: jax.Array,
             frozen: Any) -> tuple[jax.Array, Metrics]:
        mix_rng, dropout_rng = jax.random.split(rng)
        onehot = jax.nn.one_hot(batch["label"], self.num_classes)
        images, targets = self._mix(mix_rng, batch["image"], onehot)
        logits = self.logits(params, images, dropout_rng, train=True)
        per_example = common.smoothed_cross_entropy(
            logits, targets, self.config.get("label_smoothing", 0.0))
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return per_example.mean(), {"accuracy": accuracy}

    def eval_sums(self, params: Any, batch: Batch, frozen: Any) -> Metrics:
        logits = self.logits(params, batch["image"], None, train=False)
        onehot = jax.nn.one_hot(batch["label"], self.num_classes)
        loss = common.smoothed_cross_entropy(logits, onehot, 0.0)
        correct = jnp.argmax(logits, -1) == batch["label"]
        sums = {"loss": masked_sum(loss, batch["mask"]),
                "accuracy": masked_sum(correct, batch["mask"])}
        if self.num_classes > 5:
            # ImageNet's second figure (timm's acc5): the label among the 5 highest logits.
            _, top5 = jax.lax.top_k(logits, 5)
            in_top5 = jnp.any(top5 == batch["label"][:, None], axis=-1)
            sums["top5_accuracy"] = masked_sum(in_top5, batch["mask"])
        return sums
