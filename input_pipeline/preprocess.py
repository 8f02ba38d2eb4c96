"""Image preprocessing as grain transforms, and big_vision-style preprocessing strings.

``parse_preprocess("decode|inception_crop(224)|flip_lr|value_range(-1,1)")`` returns the
transforms in order; arguments are Python literals, positional or ``name=value``
(``resize_small(256, method='bicubic', antialias=True)``). Each op maps an example dict
(``image`` uint8 ``[H, W, C]`` from TFDS, other keys passed through, except by ``keep(...)``)
and ends with float32 images once ``value_range`` or ``normalize`` ran. Op arguments are
checked when the string is parsed. Random ops are ``grain.transforms.RandomMap`` and draw from
the ``np.random.Generator`` grain gives them, so they are reproducible from the loader's seed.

The resizing and cropping ops mean what big_vision's do: ``tf.image.resize`` without
antialiasing, cast back with truncation, and ``sample_distorted_bounding_box``, re-implemented
in numpy (grain runs plain Python, without TensorFlow); the RNG differs, so crops match TF's in
distribution, not draw for draw. ``random_resized_crop`` and ``antialias=True`` are the
torchvision/timm (PIL) counterparts.
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
        raise ValueError(f"PIL resizing (antialias=True, random_resized_crop) expects uint8 "
                         f"images before value_range; got {array.dtype} (put "
                         "value_range/normalize last)")
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def _from_pil(image: Image.Image, channels: int) -> np.ndarray:
    array = np.asarray(image)
    return array[..., None] if channels == 1 and array.ndim == 2 else array


# ----------------------------------------------------------------------------- resizing
# big_vision resizes with TF2's tf.image.resize, then clips to the input dtype's range and
# casts back (float -> uint8 truncates toward zero). TensorFlow is not a dependency here
# (grain runs plain Python), so its three kernels are re-implemented in numpy below. Each is
# separable: an output row (column) is a weighted sum of a few input rows (columns), given
# per axis as tap indices and weights. Arithmetic is float32, as in the TF kernels.
RESIZE_METHODS = ("bilinear", "bicubic", "area")
PIL_METHODS = ("bilinear", "bicubic")
_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
_CUBIC_TABLE = 1024  # TF's bicubic kernel reads its weights from a table of this many steps
_KEYS_A = -0.5  # the Keys cubic that TF uses with half-pixel centres (PIL's bicubic too)


def _keys_near(x: np.ndarray) -> np.ndarray:
    """The Keys cubic at |x| in [0, 1]."""
    return ((_KEYS_A + 2) * x - (_KEYS_A + 3)) * x * x + 1


def _keys_far(x: np.ndarray) -> np.ndarray:
    """The Keys cubic at |x| in [1, 2]."""
    return ((_KEYS_A * x - 5 * _KEYS_A) * x + 8 * _KEYS_A) * x - 4 * _KEYS_A


def _axis_taps(in_size: int, out_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, weights)``, each ``[out_size, taps]``: output ``o`` along this axis is
    ``sum_k weights[o, k] * input[indices[o, k]]``, as ``tf.image.resize`` computes it."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    out = np.arange(out_size, dtype=f32)
    if method == "area":
        # TF's ResizeArea: output o averages the input interval [o*scale, (o+1)*scale),
        # each input cell weighted by the length it overlaps; indices past the edge (a
        # float32 rounding of (o+1)*scale) are clamped onto the last cell.
        low, high = out * scale, (out + 1) * scale
        start = np.floor(low).astype(np.int64)
        count = np.ceil(high).astype(np.int64) - start
        cells = start[:, None] + np.arange(count.max())[None, :]
        cell = cells.astype(f32)
        overlap = np.where(cell < low[:, None],
                           np.where(cell + 1 > high[:, None], scale, cell + 1 - low[:, None]),
                           np.where(cell + 1 > high[:, None], high[:, None] - cell, f32(1)))
        weights = np.where(np.arange(count.max())[None, :] < count[:, None], overlap, 0)
        return np.clip(cells, 0, in_size - 1), (weights / scale).astype(f32)
    # Half-pixel centres (TF2): output o samples the input at (o + 0.5) * scale - 0.5.
    centre = (out + f32(0.5)) * scale - f32(0.5)
    base = np.floor(centre)
    delta = centre - base
    base = base.astype(np.int64)
    if method == "bilinear":
        # TF's ResizeBilinear clamps both neighbours into the image, so the edge pixel is
        # repeated outside it (weights 1 - delta, delta on clamped indices).
        indices = np.stack([np.maximum(base, 0), np.minimum(base + 1, in_size - 1)], 1)
        return indices, np.stack([1 - delta, delta], 1).astype(f32)
    # TF's ResizeBicubic with half-pixel centres: Keys cubic (a = -0.5) with the fractional
    # offset rounded to its 1/1024 table; taps outside the image get weight 0 and the rest
    # are renormalised to sum to 1.
    x = np.rint(delta * _CUBIC_TABLE) / _CUBIC_TABLE
    weights = np.stack([_keys_far(x + 1), _keys_near(x), _keys_near(1 - x),
                        _keys_far(2 - x)], 1).astype(f32)
    cells = base[:, None] + np.arange(-1, 3)[None, :]
    weights = np.where((cells >= 0) & (cells < in_size), weights, f32(0))
    weights = weights / weights.sum(1, keepdims=True)
    return np.clip(cells, 0, in_size - 1), weights.astype(f32)


def _resample_axis(image: np.ndarray, axis: int, out_size: int, method: str) -> np.ndarray:
    indices, weights = _axis_taps(image.shape[axis], out_size, method)
    shape = [1] * image.ndim
    shape[axis] = out_size
    result = np.zeros(image.shape[:axis] + (out_size,) + image.shape[axis + 1:], np.float32)
    for k in range(indices.shape[1]):
        result += np.take(image, indices[:, k], axis=axis) * weights[:, k].reshape(shape)
    return result


def tf_resize(image: np.ndarray, height: int, width: int, method: str = "bilinear") -> np.ndarray:
    """``tf.image.resize(image, (height, width), method, antialias=False)`` in numpy: float32
    ``[height, width, C]``, before any cast."""
    array = np.asarray(image, np.float32)
    if array.shape[0] != height:
        array = _resample_axis(array, 0, height, method)
    if array.shape[1] != width:
        array = _resample_axis(array, 1, width, method)
    return array


def _resize(image: np.ndarray, height: int, width: int, method: str = "bilinear",
            antialias: bool = False) -> np.ndarray:
    """big_vision's resize: TF2 ``tf.image.resize`` then clip to the dtype's range and cast
    back to it (so uint8 truncates); ``antialias`` takes PIL's filter instead, which is what
    torchvision/timm use on PIL images (it antialiases when shrinking and rounds to uint8)."""
    image = np.asarray(image)
    if image.shape[:2] == (height, width):
        return image  # every method is the identity at the same size
    if antialias:
        resized = _to_pil(image).resize((width, height), _PIL_FILTERS[method])
        return _from_pil(resized, image.shape[-1])
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        # astype truncates toward zero, like tf.cast from float to an integer type.
        return np.clip(tf_resize(image, height, width, method), info.min,
                       info.max).astype(image.dtype)
    if np.issubdtype(image.dtype, np.floating):
        return tf_resize(image, height, width, method).astype(image.dtype)
    raise ValueError(f"resizing ops expect integer or float images; got {image.dtype}")


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


def _resize_method(op: str, method: Any, antialias: Any,
                   allowed: tuple[str, ...] = RESIZE_METHODS) -> tuple[str, bool]:
    if not isinstance(method, str) or method not in allowed:
        raise ValueError(f"preprocessing op {op}: method={method!r} must be one of {allowed}")
    if not isinstance(antialias, (bool, np.bool_)):
        raise ValueError(f"preprocessing op {op}: antialias={antialias!r} must be True or "
                         "False")
    if antialias and method not in PIL_METHODS:
        # TF's area resize ignores antialias (it already averages), and PIL has no such
        # filter: refuse rather than silently do something else.
        raise ValueError(f"preprocessing op {op}: method={method!r} takes no "
                         f"antialias=True; antialiased resizing is one of {PIL_METHODS}")
    return method, bool(antialias)


def _describe(method: str, antialias: bool) -> str:
    return f"'{method}'" + (",antialias=True" if antialias else "")


# ----------------------------------------------------------------------------- ops
def decode() -> grain.transforms.Map:
    """Encoded bytes (PNG/JPEG) -> uint8 ``[H, W, C]``; arrays pass through unchanged."""

    def fn(image):
        if isinstance(image, (bytes, np.bytes_)):
            return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
        return np.asarray(image)

    return _ImageMap(fn, "decode")


def resize(height: int, width: int | None = None, method: str = "bilinear",
           antialias: bool = False) -> grain.transforms.Map:
    """Resize to ``[height, width]`` (``width`` defaults to ``height``), as big_vision's
    ``resize``: TF2 ``tf.image.resize`` (half-pixel centres, no antialiasing by default),
    clipped and cast back to the input dtype, so uint8 values are truncated, not rounded.
    ``method`` is ``"bilinear"``, ``"bicubic"`` or ``"area"``; ``antialias=True`` (bilinear
    or bicubic) uses PIL's filter instead, the torchvision/timm path: it antialiases when
    shrinking and rounds to uint8."""
    height = _positive_int("resize", "height", height)
    width = _positive_int("resize", "width", width if width is not None else height)
    method, antialias = _resize_method("resize", method, antialias)
    return _ImageMap(lambda image: _resize(image, height, width, method, antialias),
                     f"resize({height},{width},{_describe(method, antialias)})")


def resize_small(size: int, method: str = "area",
                 antialias: bool = False) -> grain.transforms.Map:
    """Resize so the shorter side is ``size``, keeping the aspect ratio, as big_vision's
    ``resize_small``: its default ``method`` is TF's ``"area"`` resize (each output pixel the
    mean of the input box it covers, with fractional weights at the box's edges), and the
    longer side is ``round(side * size / shorter side)``. ``method``/``antialias`` as for
    ``resize``. torchvision's ``Resize(size)`` (DeiT/timm evaluation) is
    ``method="bicubic", antialias=True``, except that it truncates the longer side where
    this rounds it (at most one pixel apart)."""
    size = _positive_int("resize_small", "size", size)
    method, antialias = _resize_method("resize_small", method, antialias)

    def fn(image):
        height, width = image.shape[:2]
        # float32, rounding half to even: big_vision's tf.round(tf.cast(side) * factor).
        factor = np.float32(size) / np.float32(min(height, width))
        new_height = max(1, int(np.rint(np.float32(height) * factor)))
        new_width = max(1, int(np.rint(np.float32(width) * factor)))
        return _resize(image, new_height, new_width, method, antialias)

    return _ImageMap(fn, f"resize_small({size},{_describe(method, antialias)})")


def central_crop(height: int, width: int | None = None) -> grain.transforms.Map:
    """The central ``[height, width]`` window (``width`` defaults to ``height``); the offsets
    round down, as big_vision's ``central_crop`` (torchvision's ``CenterCrop`` rounds half
    to even, so it can sit one pixel further down or right)."""
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


# tf.image.sample_distorted_bounding_box's defaults, which big_vision's inception_crop and
# vit_jax's training pipeline keep: aspect ratios (width / height) in [0.75, 1.33], 100
# attempts before falling back to the whole image.
_TF_ASPECT_RANGE = (np.float32(0.75), np.float32(1.33))
_TF_MAX_ATTEMPTS = 100
_TF_EPS = float(np.float32(1e-7))  # kEps of GenerateRandomCrop, a float promoted to double


def _lrintf(value: np.float32) -> int:
    # C's lrintf rounds half to even (the default rounding mode), as np.rint does.
    return int(np.rint(value))


def _tf_crop_attempt(height: int, width: int, min_fraction: np.float32,
                     max_fraction: np.float32, aspect: np.float32,
                     rng: np.random.Generator) -> tuple[int, int, int, int] | None:
    """One attempt of TF's GenerateRandomCrop (sample_distorted_bounding_box_op.cc):
    ``(top, left, crop_height, crop_width)``, or None where it fails. The crop height is
    uniform between the heights of the smallest and the largest allowed areas (not the area
    uniform, as torchvision's), and float32 as in the kernel."""
    f32 = np.float32
    min_area = min_fraction * f32(width) * f32(height)
    max_area = max_fraction * f32(width) * f32(height)
    crop_height = _lrintf(np.sqrt(min_area / aspect))
    max_height = _lrintf(np.sqrt(max_area / aspect))
    if _lrintf(f32(max_height) * aspect) > width:
        # The largest height whose rounded width still fits: the kernel computes it in
        # double and truncates, then steps down once more if rounding still overflows.
        max_height = int((width + 0.5 - _TF_EPS) / float(aspect))
        if _lrintf(f32(max_height) * aspect) > width:
            max_height -= 1
    max_height = min(max_height, height)
    if crop_height >= max_height:
        crop_height = max_height
    else:
        crop_height += int(rng.integers(max_height - crop_height + 1))  # closed range
    crop_width = _lrintf(f32(crop_height) * aspect)
    area = f32(crop_width * crop_height)
    if area < min_area:  # the kernel's fix-ups for rounding: one row more, or one less
        crop_height += 1
        crop_width = _lrintf(f32(crop_height) * aspect)
        area = f32(crop_width * crop_height)
    if area > max_area:
        crop_height -= 1
        crop_width = _lrintf(f32(crop_height) * aspect)
        area = f32(crop_width * crop_height)
    if (area < min_area or area > max_area or crop_width > width or crop_height > height
            or crop_width <= 0 or crop_height <= 0):
        return None
    # TF's Uniform(n) is [0, n): the offset that puts the crop against the bottom (right)
    # edge is never drawn, unless the crop spans the whole side.
    top = int(rng.integers(height - crop_height)) if crop_height < height else 0
    left = int(rng.integers(width - crop_width)) if crop_width < width else 0
    return top, left, crop_height, crop_width


def _inception_crop_box(height: int, width: int, rng: np.random.Generator, area_min: float,
                        area_max: float) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` as ``tf.image.sample_distorted_bounding_box``
    draws it with big_vision's arguments (no boxes, min_object_covered=0, area in percent)."""
    # TF holds the attributes as float32: area_range=(area_min / 100, area_max / 100).
    min_fraction, max_fraction = np.float32(area_min / 100), np.float32(area_max / 100)
    low, high = _TF_ASPECT_RANGE
    for _ in range(_TF_MAX_ATTEMPTS):
        aspect = rng.random(dtype=np.float32) * (high - low) + low
        box = _tf_crop_attempt(height, width, min_fraction, max_fraction, aspect, rng)
        if box is not None:
            return box
    return 0, 0, height, width


def inception_crop(size: int, area_min: float = 5, area_max: float = 100,
                   method: str = "bilinear",
                   antialias: bool = False) -> grain.transforms.RandomMap:
    """big_vision's ``inception_crop``: a random crop of ``area_min``-``area_max`` percent of
    the image area, aspect ratio 0.75-1.33, drawn as TF's ``sample_distorted_bounding_box``
    draws it (100 attempts, then the whole image), resized to ``size`` as by ``resize``. The
    "Inception" crop of Szegedy et al., 2015, as in vit_jax's fine-tuning pipeline; for
    torchvision's RandomResizedCrop (DeiT/timm) use ``random_resized_crop``."""
    size = _positive_int("inception_crop", "size", size)
    area_min = _number("inception_crop", "area_min", area_min)
    area_max = _number("inception_crop", "area_max", area_max)
    # timm/torchvision give the range as fractions, scale=(0.08, 1.0): read as percent, that
    # crops 0.08-1% of the image and trains on almost nothing, so area_max <= 1 is refused.
    if not (0 < area_min <= area_max <= 100 and area_max > 1):
        hint = (": they are percent of the image area, so fractions such as 0.08, 1.0 are "
                "written 8, 100 (or use random_resized_crop)" if area_max <= 1 else "")
        raise ValueError(f"preprocessing op inception_crop: area_min={area_min:g}, "
                         f"area_max={area_max:g} must satisfy 0 < area_min <= area_max <= 100 "
                         f"and area_max > 1{hint}")
    method, antialias = _resize_method("inception_crop", method, antialias)

    def fn(image, rng):
        top, left, crop_height, crop_width = _inception_crop_box(
            image.shape[0], image.shape[1], rng, area_min, area_max)
        crop = image[top:top + crop_height, left:left + crop_width]
        return _resize(crop, size, size, method, antialias)

    return _ImageRandomMap(fn, f"inception_crop({size},{area_min:g},{area_max:g},"
                               f"{_describe(method, antialias)})")


_RRC_RATIO = (3 / 4, 4 / 3)  # torchvision's default ratio range (width / height)
_RRC_ATTEMPTS = 10


def _random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                             scale_min: float, scale_max: float) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` as torchvision's
    ``RandomResizedCrop.get_params`` draws it: area fraction uniform, aspect ratio
    log-uniform, 10 attempts, then a central crop of the whole image clamped to the ratio
    range (not the whole image, unlike TF's sampler)."""
    area = height * width
    log_low, log_high = math.log(_RRC_RATIO[0]), math.log(_RRC_RATIO[1])
    for _ in range(_RRC_ATTEMPTS):
        target_area = area * rng.uniform(scale_min, scale_max)
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_width = round(math.sqrt(target_area * aspect))
        crop_height = round(math.sqrt(target_area / aspect))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))  # both edges reachable
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    ratio = width / height
    if ratio < _RRC_RATIO[0]:  # too tall: full width, the tallest allowed height
        crop_width, crop_height = width, round(width / _RRC_RATIO[0])
    elif ratio > _RRC_RATIO[1]:  # too wide: full height, the widest allowed width
        crop_width, crop_height = round(height * _RRC_RATIO[1]), height
    else:
        crop_width, crop_height = width, height
    return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def random_resized_crop(size: int, scale_min: float = 0.08, scale_max: float = 1.0,
                        method: str = "bilinear") -> grain.transforms.RandomMap:
    """torchvision's ``RandomResizedCrop(size, scale=(scale_min, scale_max))`` (DeiT/timm's
    training crop): area fraction ``scale_min``-``scale_max`` (fractions, not percent),
    aspect ratio 3/4-4/3 log-uniform, resized with PIL's ``method`` filter (``"bilinear"``,
    torchvision's default, or ``"bicubic"``, timm's DeiT), which antialiases like
    torchvision on PIL images and rounds to uint8."""
    size = _positive_int("random_resized_crop", "size", size)
    scale_min = _number("random_resized_crop", "scale_min", scale_min)
    scale_max = _number("random_resized_crop", "scale_max", scale_max)
    if not 0 < scale_min <= scale_max <= 1:
        # inception_crop takes percent; the same numbers here would be a whole-image crop.
        hint = (": they are fractions of the image area, so percent such as 8, 100 are "
                "written 0.08, 1.0" if scale_max > 1 else "")
        raise ValueError(f"preprocessing op random_resized_crop: scale_min={scale_min:g}, "
                         f"scale_max={scale_max:g} must satisfy 0 < scale_min <= scale_max "
                         f"<= 1{hint}")
    method, _ = _resize_method("random_resized_crop", method, True, PIL_METHODS)

    def fn(image, rng):
        top, left, crop_height, crop_width = _random_resized_crop_box(
            image.shape[0], image.shape[1], rng, scale_min, scale_max)
        crop = image[top:top + crop_height, left:left + crop_width]
        return _resize(crop, size, size, method, antialias=True)

    return _ImageRandomMap(fn, f"random_resized_crop({size},{scale_min:g},{scale_max:g},"
                               f"'{method}')")


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


def random_erasing(prob: float = 0.25, area_min: float = 0.02, area_max: float = 1 / 3,
                   aspect_min: float = 0.3) -> grain.transforms.RandomMap:
    """timm's ``RandomErasing(prob, mode="pixel", max_count=1)`` (Zhong et al., 2020; DeiT
    trains with ``prob=0.25``): with probability ``prob``, one rectangle of ``area_min``-
    ``area_max`` of the image (fractions), aspect ratio log-uniform in ``aspect_min`` to
    ``1 / aspect_min``, is filled with standard normal noise per pixel and channel; up to 10
    attempts to fit it inside the image, else nothing is erased. Float images after
    ``normalize`` (the noise is on the normalised scale, as timm erases normalised tensors)."""
    prob = _number("random_erasing", "prob", prob)
    area_min = _number("random_erasing", "area_min", area_min)
    area_max = _number("random_erasing", "area_max", area_max)
    aspect_min = _number("random_erasing", "aspect_min", aspect_min)
    if not 0 <= prob <= 1:
        raise ValueError(f"preprocessing op random_erasing: prob={prob:g} must be in [0, 1]")
    if not 0 < area_min <= area_max < 1:
        raise ValueError(f"preprocessing op random_erasing: area_min={area_min:g}, "
                         f"area_max={area_max:g} must satisfy 0 < area_min <= area_max < 1 "
                         "(fractions of the image area)")
    if not 0 < aspect_min <= 1:
        raise ValueError(f"preprocessing op random_erasing: aspect_min={aspect_min:g} must be "
                         "in (0, 1] (the range is aspect_min to 1 / aspect_min)")
    log_aspect = (math.log(aspect_min), -math.log(aspect_min))

    def fn(image, rng):
        if not np.issubdtype(np.asarray(image).dtype, np.floating):
            raise ValueError(f"preprocessing op random_erasing expects float images after "
                             f"normalize; got {np.asarray(image).dtype} (put it after "
                             "normalize/value_range)")
        if rng.random() >= prob:
            return image
        height, width, channels = image.shape
        for _ in range(10):
            target_area = rng.uniform(area_min, area_max) * height * width
            aspect = math.exp(rng.uniform(*log_aspect))
            erase_h = round(math.sqrt(target_area * aspect))
            erase_w = round(math.sqrt(target_area / aspect))
            if erase_h < height and erase_w < width:  # strictly smaller, as timm's
                top = int(rng.integers(0, height - erase_h + 1))
                left = int(rng.integers(0, width - erase_w + 1))
                image = np.array(image, np.float32)
                image[top:top + erase_h, left:left + erase_w] = rng.standard_normal(
                    (erase_h, erase_w, channels), dtype=np.float32)
                return image
        return image

    return _ImageRandomMap(fn, f"random_erasing({prob:g},{area_min:g},{area_max:g},"
                               f"{aspect_min:g})")


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



def randaugment_timm(num_layers: int = 2, magnitude: float = 10, magnitude_std: float = 0.0,
                     prob: float = 0.5, increasing: bool = False,
                     fill: tuple[int, ...] = randaugment.TIMM_FILL,
                     method: str = "bicubic") -> grain.transforms.RandomMap:
    """timm's RandAugment on uint8 RGB images. The arguments are the sections of timm's
    config string (``n``, ``m``, ``mstd``, ``p``, ``inc``) and default as it does when one is
    absent; geometric ops fill with ``fill`` and resample with ``method`` (timm's ``img_mean``
    and ``interpolation`` hparams; the defaults are DeiT's: the ImageNet mean, bicubic). DeiT's
    ``rand-m9-mstd0.5-inc1`` is ``randaugment_timm(2,9,magnitude_std=0.5,increasing=True)``.
    See ``input_pipeline.randaugment.timm_apply``."""
    op = "randaugment_timm"
    if (isinstance(num_layers, bool) or not isinstance(num_layers, (int, np.integer))
            or num_layers < 0):
        raise ValueError(f"preprocessing op {op}: num_layers={num_layers!r} must be an "
                         "integer >= 0")
    magnitude = _number(op, "magnitude", magnitude)
    if not 0 <= magnitude <= randaugment.TIMM_LEVEL_DENOM:
        raise ValueError(f"preprocessing op {op}: magnitude={magnitude:g} must be in "
                         f"[0, {randaugment.TIMM_LEVEL_DENOM:g}] (timm clips to it)")
    magnitude_std = _number(op, "magnitude_std", magnitude_std)
    if not 0 <= magnitude_std <= 100:
        raise ValueError(f"preprocessing op {op}: magnitude_std={magnitude_std:g} must be in "
                         "[0, 100] (timm's mstd > 100, uniform magnitudes, is not implemented)")
    prob = _number(op, "prob", prob)
    if not 0 <= prob <= 1:
        raise ValueError(f"preprocessing op {op}: prob={prob:g} must be in [0, 1]")
    if not isinstance(increasing, (bool, np.bool_)):
        raise ValueError(f"preprocessing op {op}: increasing={increasing!r} must be True or "
                         "False")
    if (not isinstance(fill, (tuple, list)) or len(fill) != 3
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       and 0 <= v <= 255 for v in fill)):
        raise ValueError(f"preprocessing op {op}: fill={fill!r} must be 3 integers in "
                         "[0, 255] (an RGB colour)")
    if not isinstance(method, str) or method not in randaugment.TIMM_RESAMPLE:
        raise ValueError(f"preprocessing op {op}: method={method!r} must be one of "
                         f"{tuple(randaugment.TIMM_RESAMPLE)}")
    increasing, fill = bool(increasing), tuple(int(v) for v in fill)
    return _ImageRandomMap(
        lambda image, rng: randaugment.timm_apply(image, rng, num_layers, magnitude,
                                                  magnitude_std, prob, increasing, fill, method),
        f"{op}({num_layers},{magnitude:g},magnitude_std={magnitude_std:g},prob={prob:g},"
        f"increasing={increasing},fill={fill},method='{method}')")

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
    "random_resized_crop": random_resized_crop,
    "random_crop": random_crop,
    "flip_lr": flip_lr,
    "value_range": value_range,
    "normalize": normalize,
    "randaugment": randaugment_op,
    "randaugment_timm": randaugment_timm,
    "random_erasing": random_erasing,
    "keep": Keep,
}


def _parse_arguments(part: str, spec: str, text: str) -> tuple[tuple, dict[str, Any]]:
    """``"224, method='bicubic'"`` -> ``((224,), {"method": "bicubic"})``: Python literals,
    positional then keyword, as in big_vision's strings."""
    try:
        call = ast.parse(f"op({text})", mode="eval").body
        if (not isinstance(call, ast.Call) or any(isinstance(a, ast.Starred) for a in call.args)
                or any(k.arg is None for k in call.keywords)):
            raise ValueError("expected op(literal, ..., name=literal, ...)")
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as error:
        raise ValueError(f"malformed preprocessing op {part!r} in {spec!r}: arguments must be "
                         f"Python literals, positional then name=value ({error})") from error
    return args, kwargs


def parse_preprocess(spec: str) -> list[Any]:
    """``"op1(args)|op2|..."`` -> a list of grain transforms (empty string: no ops)."""
    transforms = []
    for part in filter(None, (p.strip() for p in (spec or "").split("|"))):
        name, _, rest = part.partition("(")
        if name not in OPS:
            raise ValueError(f"unknown preprocessing op {name!r} in {spec!r}; known ops: "
                             f"{sorted(OPS)}")
        args: tuple = ()
        kwargs: dict[str, Any] = {}
        if rest:
            if not rest.endswith(")"):
                raise ValueError(f"malformed preprocessing op {part!r} in {spec!r}")
            args, kwargs = _parse_arguments(part, spec, rest[:-1])
        try:
            transforms.append(OPS[name](*args, **kwargs))
        except TypeError as error:
            raise ValueError(f"bad arguments for preprocessing op {part!r}: {error}") from error
    return transforms
