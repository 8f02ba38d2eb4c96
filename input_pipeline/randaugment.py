"""RandAugment (Cubuk et al., 2020) on uint8 numpy images, with PIL.

Each image gets ``num_layers`` ops drawn uniformly from ``OPS``, all at one ``magnitude`` on
the paper's 0–10 scale; geometric ops and enhancements pick a random sign. Written with PIL
because grain runs plain Python transforms (no TensorFlow image ops here).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 10.0
_FILL = (128, 128, 128)


def _signed(value: float, rng: np.random.Generator) -> float:
    return value if rng.random() < 0.5 else -value


def _enhance(enhancer) -> Callable:
    def op(image, magnitude, rng):
        return enhancer(image).enhance(1.0 + _signed(0.9 * magnitude / MAX_MAGNITUDE, rng))
    return op


def _affine(image: Image.Image, matrix: tuple) -> Image.Image:
    fill = _FILL[0] if image.mode == "L" else _FILL
    return image.transform(image.size, Image.AFFINE, matrix, fillcolor=fill)


OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "identity": lambda image, m, rng: image,
    "autocontrast": lambda image, m, rng: ImageOps.autocontrast(image),
    "equalize": lambda image, m, rng: ImageOps.equalize(image),
    "rotate": lambda image, m, rng: image.rotate(
        _signed(30.0 * m / MAX_MAGNITUDE, rng),
        fillcolor=_FILL[0] if image.mode == "L" else _FILL),
    "solarize": lambda image, m, rng: ImageOps.solarize(image, int(256 - 256 * m / MAX_MAGNITUDE)),
    "posterize": lambda image, m, rng: ImageOps.posterize(
        image, max(1, int(8 - 4 * m / MAX_MAGNITUDE))),
    "color": _enhance(ImageEnhance.Color),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": lambda image, m, rng: _affine(
        image, (1, _signed(0.3 * m / MAX_MAGNITUDE, rng), 0, 0, 1, 0)),
    "shear_y": lambda image, m, rng: _affine(
        image, (1, 0, 0, _signed(0.3 * m / MAX_MAGNITUDE, rng), 1, 0)),
    "translate_x": lambda image, m, rng: _affine(
        image, (1, 0, _signed(0.45 * image.size[0] * m / MAX_MAGNITUDE, rng), 0, 1, 0)),
    "translate_y": lambda image, m, rng: _affine(
        image, (1, 0, 0, 0, 1, _signed(0.45 * image.size[1] * m / MAX_MAGNITUDE, rng))),
}


def apply(image: np.ndarray, rng: np.random.Generator, num_layers: int,
          magnitude: float) -> np.ndarray:
    """uint8 ``[H, W, C]`` -> uint8 ``[H, W, C]`` after ``num_layers`` random ops."""
    if not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(f"randaugment magnitude={magnitude} must be in [0, {MAX_MAGNITUDE}]")
    if np.asarray(image).dtype != np.uint8:
        raise ValueError("randaugment expects uint8 images (put it before value_range)")
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    names = list(OPS)
    for _ in range(num_layers):
        pil = OPS[names[int(rng.integers(len(names)))]](pil, float(magnitude), rng)
    out = np.asarray(pil)
    return out[..., None] if channels == 1 else out
