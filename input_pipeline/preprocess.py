"""Image preprocessing as grain transforms, and big_vision-style preprocessing strings.

``parse_preprocess("decode|inception_crop(224)|flip_lr|value_range(-1,1)")`` returns the
transforms in order. Each op maps an example dict (``image`` uint8 ``[H, W, C]`` from
TFDS, other keys passed through, except by ``keep(...)``) and ends with float32 images once
``value_range`` or ``normalize`` ran. Op arguments are checked when the string is parsed.
Random ops are ``grain.transforms.RandomMap`` and draw from the ``np.random.Generator`` grain
gives them, so they are reproducible from the loader's seed.
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


# ----------------------------------------------------------------------------- arguments
# Checked when the string is parsed, so a bad argument fails before any data is read (not
# inside a loader thread, or silently as a wrong crop), naming the op and the argument.
def _positive_int(op: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"preprocessing op {op}: {name}={value!r} must be a positive integer "
                         "(pixels)")
    return int(value)


def _number(op: str, name: str, value: Any) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)):
        raise ValueError(f"preprocessing op {op}: {name}={value!r} must be a finite number")
    return float(value)


# ----------------------------------------------------------------------------- ops
def decode() -> grain.transforms.Map:
    """Encoded bytes (PNG/JPEG) -> uint8 ``[H, W, C]``; arrays pass through unchanged."""

    def fn(image):
        if isinstance(image, (bytes, np.bytes_)):
            return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
        return np.asarray(image)

    return _ImageMap(fn, "decode")


def resize(height: int, width: int | None = None) -> grain.transforms.Map:
    """Bilinear resize to ``[height, width]`` (``width`` defaults to ``height``)."""
    height = _positive_int("resize", "height", height)
    width = _positive_int("resize", "width", width if width is not None else height)
    return _ImageMap(lambda image: _resize(image, height, width), f"resize({height},{width})")


def resize_small(size: int) -> grain.transforms.Map:
    """Resize so the shorter side is ``size``, keeping the aspect ratio."""
    size = _positive_int("resize_small", "size", size)

    def fn(image):
        height, width = image.shape[:2]
        scale = size / min(height, width)
        return _resize(image, max(1, round(height * scale)), max(1, round(width * scale)))

    return _ImageMap(fn, f"resize_small({size})")


def central_crop(height: int, width: int | None = None) -> grain.transforms.Map:
    """The central ``[height, width]`` window (``width`` defaults to ``height``)."""
    height = _positive_int("central_crop", "height", height)
    width = _positive_int("central_crop", "width", width if width is not None else height)

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
    size = _positive_int("inception_crop", "size", size)
    area_min = _number("inception_crop", "area_min", area_min)
    area_max = _number("inception_crop", "area_max", area_max)
    # timm/torchvision give the range as fractions, scale=(0.08, 1.0): read as percent, that
    # crops 0.08-1% of the image and trains on almost nothing, so area_max <= 1 is refused.
    if not (0 < area_min <= area_max <= 100 and area_max > 1):
        hint = (": they are percent of the image area, so fractions such as 0.08, 1.0 are "
                "written 8, 100" if area_max <= 1 else "")
        raise ValueError(f"preprocessing op inception_crop: area_min={area_min:g}, "
                         f"area_max={area_max:g} must satisfy 0 < area_min <= area_max <= 100 "
                         f"and area_max > 1{hint}")

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
    size = _positive_int("random_crop", "size", size)
    if isinstance(padding, bool) or not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"preprocessing op random_crop: padding={padding!r} must be an "
                         "integer >= 0 (pixels)")

    def fn(image, rng):
        if padding:
            image = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        if size > min(image.shape[:2]):
            raise ValueError(f"preprocessing op random_crop({size},{padding}): size={size} "
                             f"is larger than the padded image {image.shape[:2]}")
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
    low, high = _number("value_range", "low", low), _number("value_range", "high", high)
    if not low < high:
        raise ValueError(f"preprocessing op value_range: low={low:g}, high={high:g}: expected "
                         "low < high")
    return _ImageMap(
        lambda image: (np.asarray(image, np.float32) / 255.0 * (high - low) + low),
        f"value_range({low},{high})")


def normalize(*mean_then_std: float) -> grain.transforms.Map:
    """0..255 -> (x/255 - mean) / std per channel, float32; give C means then C stds."""
    if not mean_then_std or len(mean_then_std) % 2:
        raise ValueError(f"preprocessing op normalize: got {len(mean_then_std)} arguments "
                         f"{mean_then_std}; expected C means then C stds (an even number > 0)")
    values = [_number("normalize", "argument", v) for v in mean_then_std]
    half = len(values) // 2
    mean = np.array(values[:half], np.float32)
    std = np.array(values[half:], np.float32)
    if np.any(std <= 0):
        raise ValueError(f"preprocessing op normalize: stds={values[half:]} must all be > 0 "
                         "(the last half of the arguments)")
    return _ImageMap(lambda image: (np.asarray(image, np.float32) / 255.0 - mean) / std,
                     f"normalize({mean_then_std})")


def randaugment_op(num_layers: int = 2, magnitude: float = 9) -> grain.transforms.RandomMap:
    """RandAugment (Cubuk et al., 2020) on uint8 images; see ``input_pipeline.randaugment``."""
    if (isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer))
            or num_layers < 0):
        raise ValueError(f"preprocessing op randaugment: num_layers={num_layers!r} must be an "
                         "integer >= 0")
    magnitude = _number("randaugment", "magnitude", magnitude)
    if not 0 <= magnitude <= randaugment.MAX_MAGNITUDE:
        raise ValueError(f"preprocessing op randaugment: magnitude={magnitude:g} must be in "
                         f"[0, {randaugment.MAX_MAGNITUDE:g}]")
    return _ImageRandomMap(
        lambda image, rng: randaugment.apply(image, rng, num_layers, magnitude),
        f"randaugment({num_layers},{magnitude})")


class Keep(grain.transforms.Map):
    """Only ``keys`` of each example, each of which must be present.

    TFDS examples carry features a task never reads: strings (cifar10's ``id``, ImageNet's
    ``file_name``), which JAX cannot hold, and variable-size arrays (a pet's
    ``segmentation_mask``), which cannot be stacked into a batch. Put last, before batching.
    """

    def __init__(self, *keys: str) -> None:
        if not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"preprocessing op keep: keys={keys!r} must be one or more "
                             "non-empty strings")
        self.keys = keys

    def map(self, example: Example) -> Example:
        missing = [k for k in self.keys if k not in example]
        if missing:
            raise ValueError(f"preprocessing op keep: the example has no {missing}; it has "
                             f"keys {sorted(example)}")
        return {k: example[k] for k in self.keys}

    def __repr__(self) -> str:
        return f"keep{self.keys}"


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
    "keep": Keep,
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
