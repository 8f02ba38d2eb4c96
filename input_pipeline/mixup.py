"""Mixup (Zhang et al., 2018) and CutMix (Yun et al., 2019), applied on device inside jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _cutmix_box(rng: jax.Array, height: int, width: int, lam: jax.Array) -> jax.Array:
    """A boolean ``[height, width]`` box of area ≈ (1 - lam) at a random centre."""
    cut_ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = cut_ratio * height, cut_ratio * width
    rng_y, rng_x = jax.random.split(rng)
    centre_y = jax.random.uniform(rng_y, (), minval=0, maxval=height)
    centre_x = jax.random.uniform(rng_x, (), minval=0, maxval=width)
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    top = jnp.clip(centre_y - cut_h / 2, 0, height)
    bottom = jnp.clip(centre_y + cut_h / 2, 0, height)
    left = jnp.clip(centre_x - cut_w / 2, 0, width)
    right = jnp.clip(centre_x + cut_w / 2, 0, width)
    return (rows >= jnp.floor(top)) & (rows < jnp.floor(bottom)) & \
        (cols >= jnp.floor(left)) & (cols < jnp.floor(right))


def mixup_cutmix(rng: jax.Array, images: jax.Array, labels: jax.Array, *,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Mixes each example with the batch reversed (as timm does), one ratio per batch.

    Args:
      images: ``[batch, height, width, channels]`` float; the mixed images keep their dtype
        (bfloat16 included).
      labels: ``[batch, num_classes]`` one-hot (or soft) targets.
      mixup_alpha / cutmix_alpha: Beta(α, α) parameters; 0 disables that method.
      switch_prob: with both enabled, the probability of CutMix for this batch.

    Returns:
      mixed images and targets; each target row still sums to 1. With CutMix, the label
      weight is the pasted box's exact area fraction.
    """
    if not (mixup_alpha or cutmix_alpha):
        return images, labels
    rng_choice, rng_mix, rng_cut, rng_box = jax.random.split(rng, 4)
    height, width = images.shape[1:3]
    partner_images, partner_labels = images[::-1], labels[::-1]

    def mixup(_):
        lam = jax.random.beta(rng_mix, mixup_alpha, mixup_alpha) if mixup_alpha else 1.0
        # lam is float32, which promotes bfloat16 images: cast back here, not after the
        # cond, whose two branches must return the same dtype (cutmix keeps the images').
        mixed = (lam * images + (1 - lam) * partner_images).astype(images.dtype)
        return mixed, jnp.asarray(lam, jnp.float32)

    def cutmix(_):
        lam = jax.random.beta(rng_cut, cutmix_alpha, cutmix_alpha)
        box = _cutmix_box(rng_box, height, width, lam)
        mixed = jnp.where(box[None, :, :, None], partner_images, images)
        return mixed, 1.0 - jnp.mean(box.astype(jnp.float32))

    if mixup_alpha and cutmix_alpha:
        use_cutmix = jax.random.uniform(rng_choice) < switch_prob
        mixed, lam = jax.lax.cond(use_cutmix, cutmix, mixup, None)
    elif cutmix_alpha:
        mixed, lam = cutmix(None)
    else:
        mixed, lam = mixup(None)
    targets = lam * labels + (1 - lam) * partner_labels
    return mixed, targets
