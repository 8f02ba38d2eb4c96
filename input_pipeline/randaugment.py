"""RandAugment (Cubuk et al., 2020) on uint8 numpy images, with PIL.

``apply``: each image gets ``num_layers`` ops drawn uniformly from ``OPS``, all at one
``magnitude`` on the paper's 0–10 scale; geometric ops and enhancements pick a random sign.
``timm_apply``: timm's variant (DeiT's ``rand-m9-mstd0.5-inc1``), its ops pixel for pixel;
see the section below. Written with PIL because grain runs plain Python transforms (no
TensorFlow image ops here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

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


# ----------------------------------------------------------------------------- timm's flavour
# timm's RandAugment (``timm.data.auto_augment.rand_augment_transform``), which DeiT trains
# with as ``rand-m9-mstd0.5-inc1``, re-implemented op by op so that each op gives timm's pixels
# for the same magnitude and sign. Unlike ``apply`` above: each of the ``num_layers`` ops
# (drawn uniformly, with replacement) is applied only with probability ``prob``; an applied op
# draws its own magnitude, normal around ``magnitude`` with std ``magnitude_std`` and clipped
# to [0, 10]; its op set and argument scales are timm's (``increasing`` picks the ops whose
# severity grows with the magnitude); geometric ops fill with ``fill`` and resample with
# ``method`` (DeiT: the ImageNet mean in 0..255, bicubic). The draws come from the numpy
# Generator grain gives, so they match timm's in distribution, not draw for draw.
TIMM_LEVEL_DENOM = 10.0  # magnitudes are on a 0..10 scale; an op's level is magnitude / 10
TIMM_FILL = (124, 116, 104)  # round(255 * ImageNet mean), timm's img_mean for DeiT
TIMM_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
                 "bicubic": Image.BICUBIC}


def _level(magnitude: float) -> float:
    return magnitude / TIMM_LEVEL_DENOM


def _sign(value: float, negate: bool) -> float:
    return -value if negate else value


def _posterize_bits(magnitude: float) -> int:  # 0..4 bits kept, fewer at low magnitude
    return int(_level(magnitude) * 4)


def _solarize_threshold(magnitude: float) -> int:  # 0..256, pixels >= it are inverted
    return min(256, int(_level(magnitude) * 256))


def _posterize(image: Image.Image, bits: int, fill, resample) -> Image.Image:
    if bits <= 0:
        # Keeping no bits is black, as Pillow gave when timm's ops were written; the Pillow
        # installed here refuses 0 bits, so timm raises there (posterize_increasing at
        # magnitude 10, where DeiT's magnitude noise clips about 2% of its draws).
        return Image.new(image.mode, image.size)
    return image if bits >= 8 else ImageOps.posterize(image, bits)


def _solarize_add(image: Image.Image, add: int, fill, resample) -> Image.Image:
    # Adds ``add`` (saturating at 255) to the values below 128 and keeps the others.
    table = [min(255, value + add) if value < 128 else value for value in range(256)]
    return image.point(table * len(image.getbands()))


def _timm_enhance(enhancer) -> Callable:
    return lambda image, factor, fill, resample: enhancer(image).enhance(factor)


def _timm_affine(coefficients: Callable[[float, Image.Image], tuple]) -> Callable:
    def op(image, value, fill, resample):
        return image.transform(image.size, Image.AFFINE, coefficients(value, image),
                               resample=resample, fillcolor=fill)
    return op


class TimmOp(NamedTuple):
    """``argument(magnitude, negate)`` -> the op's argument (``None``: it takes none);
    ``fn(image, argument, fill, resample)``; ``signed``: whether a random sign is drawn."""
    argument: Callable[[float, bool], Any]
    fn: Callable[[Image.Image, Any, Any, int], Image.Image]
    signed: bool = False


def _no_argument(magnitude: float, negate: bool) -> None:
    return None


def _enhance_factor(magnitude: float, negate: bool) -> float:  # 0.1..1.9, 1.0: no change
    return _level(magnitude) * 1.8 + 0.1


def _enhance_increasing_factor(magnitude: float, negate: bool) -> float:
    # Away from 1.0 (no change) on either side as the magnitude grows, never below 0.1.
    return max(0.1, 1.0 + _sign(_level(magnitude) * 0.9, negate))


TIMM_OPS: dict[str, TimmOp] = {
    "auto_contrast": TimmOp(_no_argument, lambda image, a, f, r: ImageOps.autocontrast(image)),
    "equalize": TimmOp(_no_argument, lambda image, a, f, r: ImageOps.equalize(image)),
    "invert": TimmOp(_no_argument, lambda image, a, f, r: ImageOps.invert(image)),
    "rotate": TimmOp(lambda m, negate: _sign(_level(m) * 30.0, negate),
                     lambda image, degrees, fill, resample: image.rotate(
                         degrees, resample=resample, fillcolor=fill), signed=True),
    "posterize": TimmOp(lambda m, negate: _posterize_bits(m), _posterize),
    "posterize_increasing": TimmOp(lambda m, negate: 4 - _posterize_bits(m), _posterize),
    "solarize": TimmOp(lambda m, negate: _solarize_threshold(m),
                       lambda image, threshold, f, r: ImageOps.solarize(image, threshold)),
    "solarize_increasing": TimmOp(lambda m, negate: 256 - _solarize_threshold(m),
                                  lambda image, threshold, f, r: ImageOps.solarize(
                                      image, threshold)),
    "solarize_add": TimmOp(lambda m, negate: min(128, int(_level(m) * 110)), _solarize_add),
    "shear_x": TimmOp(lambda m, negate: _sign(_level(m) * 0.3, negate),
                      _timm_affine(lambda s, image: (1, s, 0, 0, 1, 0)), True),
    "shear_y": TimmOp(lambda m, negate: _sign(_level(m) * 0.3, negate),
                      _timm_affine(lambda s, image: (1, 0, 0, s, 1, 0)), True),
    # A fraction of the width (height), up to 0.45 of it.
    "translate_x_rel": TimmOp(lambda m, negate: _sign(_level(m) * 0.45, negate),
                              _timm_affine(lambda p, image: (1, 0, p * image.size[0], 0, 1, 0)),
                              True),
    "translate_y_rel": TimmOp(lambda m, negate: _sign(_level(m) * 0.45, negate),
                              _timm_affine(lambda p, image: (1, 0, 0, 0, 1, p * image.size[1])),
                              True),
}

for _name, _enhancer in (("color", ImageEnhance.Color), ("contrast", ImageEnhance.Contrast),
                         ("brightness", ImageEnhance.Brightness),
                         ("sharpness", ImageEnhance.Sharpness)):
    TIMM_OPS[_name] = TimmOp(_enhance_factor, _timm_enhance(_enhancer))
    TIMM_OPS[f"{_name}_increasing"] = TimmOp(_enhance_increasing_factor,
                                             _timm_enhance(_enhancer), signed=True)
del _name, _enhancer

# timm's two RandAugment op sets (``inc0``, ``inc1``), in timm's order.
TIMM_TRANSFORMS = ("auto_contrast", "equalize", "invert", "rotate", "posterize", "solarize",
                   "solarize_add", "color", "contrast", "brightness", "sharpness", "shear_x",
                   "shear_y", "translate_x_rel", "translate_y_rel")
TIMM_INCREASING_TRANSFORMS = tuple(
    f"{name}_increasing" if f"{name}_increasing" in TIMM_OPS else name
    for name in TIMM_TRANSFORMS)


def timm_op(name: str, image: Image.Image, magnitude: float, negate: bool = False,
            fill: tuple[int, ...] = TIMM_FILL, method: str = "bicubic") -> Image.Image:
    """One of timm's RandAugment ops at ``magnitude`` (0..10); ``negate`` flips the sign of
    signed ops (timm negates with probability 1/2) and is ignored by the others."""
    op = TIMM_OPS[name]
    return op.fn(image, op.argument(float(magnitude), bool(negate)), tuple(fill),
                 TIMM_RESAMPLE[method])


def timm_draw(rng: np.random.Generator, num_layers: int, magnitude: float,
              magnitude_std: float = 0.0, prob: float = 0.5,
              increasing: bool = False) -> list[tuple[str, float, bool]]:
    """The ops one image gets, as ``(name, magnitude, negate)``, in order (skipped ops left
    out): ``num_layers`` names drawn uniformly with replacement, then for each, in timm's
    order, whether it applies (probability ``prob``), its magnitude and, if signed, its sign."""
    names = TIMM_INCREASING_TRANSFORMS if increasing else TIMM_TRANSFORMS
    plan = []
    for index in rng.integers(len(names), size=num_layers):
        name = names[int(index)]
        if prob < 1.0 and rng.random() > prob:
            continue
        value = float(magnitude)
        if magnitude_std > 0:
            value = float(rng.normal(value, magnitude_std))
        value = max(0.0, min(value, TIMM_LEVEL_DENOM))
        negate = bool(TIMM_OPS[name].signed and rng.random() > 0.5)
        plan.append((name, value, negate))
    return plan


def timm_apply(image: np.ndarray, rng: np.random.Generator, num_layers: int, magnitude: float,
               magnitude_std: float = 0.0, prob: float = 0.5, increasing: bool = False,
               fill: tuple[int, ...] = TIMM_FILL, method: str = "bicubic") -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` -> uint8 ``[H, W, 3]`` after timm's RandAugment
    (``rand-m{magnitude}-n{num_layers}-mstd{magnitude_std}-p{prob}-inc{increasing}``)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"randaugment_timm expects uint8 RGB images [H, W, 3] before "
                         f"value_range/normalize; got {array.dtype} {array.shape}")
    pil = Image.fromarray(array)
    for name, value, negate in timm_draw(rng, num_layers, magnitude, magnitude_std, prob,
                                         increasing):
        pil = timm_op(name, pil, value, negate, fill, method)
    return np.asarray(pil)
