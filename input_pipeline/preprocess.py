"""Image preprocessing as grain transforms, and big_vision-style preprocessing strings.

``parse_preprocess("decode|inception_crop(224)|flip_lr|value_range(-1,1)")`` returns the
transforms in order. Each op maps an example dict (``image`` uint8 ``[H, W, C]`` from
TFDS, other keys passed through) and ends with float32 images once ``value_range`` or
``normalize`` ran. Random ops are ``grain.transforms.RandomMap`` and draw from the
``np.random.Generator`` grain gives them, so they are reproducible from the loader's seed.
"""

from __future__ import annotations

import ast
import io
import math
from collections.abc import Callable
from typing import Any

import grain
import numpy as np
from PIL import Image

from input_pipeline import randaugment

Example = dict[str, Any]


def _to_pil(image: np.ndarray) -> Image.Image:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"resizing/cropping ops expect uint8 images before value_range; got "
                         f"{array.dtype} (put value_range/normalize last)")
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _from_pil(image: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(image)
    return array[..., None] if channels == 1 and array.ndim == 2 else array


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    resized = _to_pil(image).resize((width, height), Image.BILINEAR)
    return _from_pil(resized, image.shape[-1])


class _ImageMap(grain.transforms.Map):
    """A deterministic op on ``example["image"]``."""

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], name: str) -> None:
        self.fn, self.name = fn, name

    def map(self, example: Example) -> Example:
        return {**example, "image": self.fn(example["image"])}

    def __repr__(self) -> str:
        return self.name


class _ImageRandomMap(grain.transforms.RandomMap):
    """A random op on ``example["image"]``: ``fn(image, rng)``."""

    def __init__(self, fn: Callable[[np.ndarray, np.random.Generator], np.ndarray],
                 name: str) -> None:
        self.fn, self.name = fn, name

    def random_map(self, example: Example, rng: np.random.Generator) -> Example:
        return {**example, "image": self.fn(example["image"], rng)}

    def __repr__(self) -> str:
        return self.name


# ----------------------------------------------------------------------------- ops
def decode() -> grain.transforms.Map:
    """Encoded bytes (PNG/JPEG) -> uint8 ``[H, W, C]``; arrays pass through unchanged."""

    def fn(image):
        if isinstance(image, (bytes, np.bytes_)):
            return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
        return np.asarray(image)

    return _ImageMap(fn, "decode")


def resize(height: int, width: int | None = None) -> grain.transforms.Map:
    """Bilinear resize to ``[height, width]``."""
    width = width or height
    return _ImageMap(lambda image: _resize(image, height, width), f"resize({height},{width})")


def resize_small(size: int) -> grain.transforms.Map:
    """Resize so the shorter side is ``size``, keeping the aspect ratio."""

    def fn(image):
        height, width = image.shape[:2]
        scale = size / min(height, width)
        return _resize(image, max(1, round(height * scale)), max(1, round(width * scale)))

    return _ImageMap(fn, f"resize_small({size})")


def central_crop(height: int, width: int | None = None) -> grain.transforms.Map:
    width = width or height

    def fn(image):
        top = (image.shape[0] - height) // 2
        left = (image.shape[1] - width) // 2
        if top < 0 or left < 0:
            raise ValueError(f"central_crop({height},{width}) is larger than the image "
                             f"{image.shape[:2]}")
        return image[top:top + height, left:left + width]

    return _ImageMap(fn, f"central_crop({height},{width})")


def inception_crop(size: int, area_min: float = 5,
                   area_max: float = 100) -> grain.transforms.RandomMap:
    """Random crop of 5–100% of the area (percent), aspect ratio 3/4–4/3, resized to
    ``size`` (the "Inception" random-resized crop of Szegedy et al., 2015)."""

    def fn(image, rng):
        height, width = image.shape[:2]
        area = height * width
        for _ in range(10):
            target_area = area * rng.uniform(area_min, area_max) / 100.0
            aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            crop_w = int(round(math.sqrt(target_area * aspect)))
            crop_h = int(round(math.sqrt(target_area / aspect)))
            if 0 < crop_w <= width and 0 < crop_h <= height:
                top = int(rng.integers(0, height - crop_h + 1))
                left = int(rng.integers(0, width - crop_w + 1))
                return _resize(image[top:top + crop_h, left:left + crop_w], size, size)
        return _resize(image, size, size)  # fall back to the whole image

    return _ImageRandomMap(fn, f"inception_crop({size},{area_min},{area_max})")


def random_crop(size: int, padding: int = 0) -> grain.transforms.RandomMap:
    """Zero-pad by ``padding`` then crop ``size`` at a random place (CIFAR-style)."""

    def fn(image, rng):
        if padding:
            image = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        return image[top:top + size, left:left + size]

    return _ImageRandomMap(fn, f"random_crop({size},{padding})")


def flip_lr() -> grain.transforms.RandomMap:
    """Horizontal flip with probability 1/2."""
    return _ImageRandomMap(lambda image, rng: image[:, ::-1] if rng.random() < 0.5 else image,
                           "flip_lr")


def value_range(low: float, high: float) -> grain.transforms.Map:
    """0..255 -> ``[low, high]``, float32."""
    return _ImageMap(
        lambda image: (np.asarray(image, np.float32) / 255.0 * (high - low) + low),
        f"value_range({low},{high})")


def normalize(*mean_then_std: float) -> grain.transforms.Map:
    """0..255 -> (x/255 - mean) / std per channel, float32; give C means then C stds."""
    if len(mean_then_std) % 2:
        raise ValueError(f"normalize needs as many stds as means; got {mean_then_std}")
    half = len(mean_then_std) // 2
    mean = np.array(mean_then_std[:half], np.float32)
    std = np.array(mean_then_std[half:], np.float32)
    return _ImageMap(lambda image: (np.asarray(image, np.float32) / 255.0 - mean) / std,
                     f"normalize({mean_then_std})")


def randaugment_op(num_layers: int = 2, magnitude: float = 9) -> grain.transforms.RandomMap:
    """RandAugment (Cubuk et al., 2020) on uint8 images; see ``input_pipeline.randaugment``."""
    return _ImageRandomMap(
        lambda image, rng: randaugment.apply(image, rng, num_layers, magnitude),
        f"randaugment({num_layers},{magnitude})")


OPS: dict[str, Callable[..., Any]] = {
    "decode": decode,
    "resize": resize,
    "resize_small": resize_small,
    "central_crop": central_crop,
    "inception_crop": inception_crop,
    "random_crop": random_crop,
    "flip_lr": flip_lr,
    "value_range": value_range,
    "normalize": normalize,
    "randaugment": randaugment_op,
}


def parse_preprocess(spec: str) -> list[Any]:
    """``"op1(args)|op2|..."`` -> a list of grain transforms (empty string: no ops)."""
    transforms = []
    for part in filter(None, (p.strip() for p in (spec or "").split("|"))):
        name, _, rest = part.partition("(")
        if name not in OPS:
            raise ValueError(f"unknown preprocessing op {name!r} in {spec!r}; known ops: "
                             f"{sorted(OPS)}")
        args: tuple = ()
        if rest:
            if not rest.endswith(")"):
                raise ValueError(f"malformed preprocessing op {part!r} in {spec!r}")
            parsed = ast.literal_eval(f"({rest[:-1]},)") if rest[:-1].strip() else ()
            args = tuple(parsed)
        try:
            transforms.append(OPS[name](*args))
        except TypeError as error:
            raise ValueError(f"bad arguments for preprocessing op {part!r}: {error}") from error
    return transforms
