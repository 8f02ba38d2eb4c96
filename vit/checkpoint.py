"""The official ViT ``.npz`` checkpoints (google-research/vision_transformer layout).

A checkpoint is a flat ``.npz`` whose keys join the parameter path with ``/``:
``embedding/kernel`` ``[ph, pw, C, D]``, ``cls`` ``[1, 1, D]``,
``Transformer/posembed_input/pos_embedding`` ``[1, N + 1, D]``,
``Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
LayerNorm_2, MlpBlock_3/{Dense_0, Dense_1}}``, ``Transformer/encoder_norm``, ``pre_logits``
and ``head``. ``VisionTransformer`` uses exactly these names, so loading is a key-by-key copy
plus three adaptations: a new head, dropping ``pre_logits``, and resizing the position grid.
The official checkpoints live at ``gs://vit_models/imagenet21k/ViT-B_16.npz`` (and
``gs://vit_models/augreg/...``); download them on a connected machine (``gsutil cp``).
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import numpy as np
import scipy.ndimage
from absl import logging
from flax import traverse_util

from vit.model import VisionTransformer, to_pair

OFFICIAL_CHECKPOINTS = "gs://vit_models/imagenet21k/ and gs://vit_models/augreg/"
_SCANNED_BLOCK = "Transformer/encoderblock/block/"
_POSEMBED = "Transformer/posembed_input/pos_embedding"
# Parameters of the tokens that precede the patches in the position table, in that order.
_PREFIX_TOKENS = ("cls", "dist_token")


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """Nested parameters -> ``{"a/b/kernel": array}``."""
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def unflatten_params(flat: dict[str, Any]) -> dict[str, Any]:
    return traverse_util.unflatten_dict(flat, sep="/")


def unstack_scanned_blocks(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``encoderblock/block/...`` ``[num_layers, ...]`` -> ``encoderblock_{i}/...``."""
    out = {}
    for key, value in flat.items():
        if key.startswith(_SCANNED_BLOCK):
            rest = key[len(_SCANNED_BLOCK):]
            for layer in range(value.shape[0]):
                out[f"Transformer/encoderblock_{layer}/{rest}"] = value[layer]
        else:
            out[key] = value
    return out


def stack_blocks(flat: dict[str, np.ndarray], num_layers: int) -> dict[str, np.ndarray]:
    """``encoderblock_{i}/...`` -> ``encoderblock/block/...`` ``[num_layers, ...]``."""
    out, per_layer = {}, {}
    for key, value in flat.items():
        if key.startswith("Transformer/encoderblock_"):
            layer, rest = key[len("Transformer/encoderblock_"):].split("/", 1)
            per_layer.setdefault(rest, {})[int(layer)] = value
        else:
            out[key] = value
    for rest, layers in per_layer.items():
        if sorted(layers) != list(range(num_layers)):
            raise ValueError(f"{rest}: expected layers 0..{num_layers - 1}, got {sorted(layers)}")
        out[_SCANNED_BLOCK + rest] = np.stack([layers[i] for i in range(num_layers)])
    return out


# The published checkpoints were written by an older Flax that numbered submodules with one
# counter per block (LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3).
# The same official code run on today's Flax numbers each type separately; accept both.
_PER_TYPE_NAMES = {"MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
                   "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}


def canonical_block_names(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames per-type-numbered block submodules to the published checkpoints' names."""
    if not any("/MultiHeadDotProductAttention_0/" in key for key in flat):
        return flat
    out = {}
    for key, value in flat.items():
        parts = key.split("/")
        if len(parts) > 2 and parts[1].startswith("encoderblock"):
            parts[2] = _PER_TYPE_NAMES.get(parts[2], parts[2])
        out["/".join(parts)] = value
    return out


def save_npz(params: Any, path: str) -> None:
    """Writes ``params`` in the official flat layout (per-layer blocks even from a scanned
    model), readable by the official code and by ``load_pretrained``."""
    flat = unstack_scanned_blocks(flatten_params(jax.device_get(params)))
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **flat)


def _square_grid(num_positions: int) -> tuple[int, int] | None:
    side = math.isqrt(num_positions)
    return (side, side) if side * side == num_positions else None


def resize_posembed(posembed: np.ndarray, num_prefix_tokens: int,
                    new_grid: tuple[int, int],
                    old_grid: tuple[int, int] | None = None) -> np.ndarray:
    """``[1, prefix + old_h*old_w, D]`` -> ``[1, prefix + new_h*new_w, D]``.

    The class (and distillation) tokens' embeddings are kept apart and unchanged; the grid
    (``old_grid``, by default square as in every official checkpoint) is interpolated
    bilinearly with ``scipy.ndimage.zoom(order=1)``, the interpolation of the official
    fine-tuning code, so loaded numbers match it.
    """
    prefix, grid = posembed[:, :num_prefix_tokens], posembed[0, num_prefix_tokens:]
    old_grid = old_grid or _square_grid(len(grid))
    if old_grid is None or old_grid[0] * old_grid[1] != len(grid):
        raise ValueError(
            f"{_POSEMBED}: {len(grid)} grid positions are not a "
            f"{'square grid' if old_grid is None else f'{old_grid[0]}x{old_grid[1]} grid'}; "
            "pass the checkpoint's (height, width) grid as checkpoint_grid")
    grid = grid.reshape(*old_grid, -1)
    zoom = (new_grid[0] / old_grid[0], new_grid[1] / old_grid[1], 1)
    grid = scipy.ndimage.zoom(grid, zoom, order=1).reshape(1, new_grid[0] * new_grid[1], -1)
    return np.concatenate([prefix, grid.astype(posembed.dtype)], axis=1)


def _fitted_posembed(loaded: dict[str, np.ndarray], model: VisionTransformer,
                     checkpoint_grid: tuple[int, int] | None) -> np.ndarray:
    """The checkpoint's position table ``[1, prefix + gh*gw, D]`` on ``model``'s grid.

    Resized whenever the checkpoint's grid (``checkpoint_grid``, else square when its number
    of positions is a square, as in every official checkpoint) differs from the model's, even
    at an equal number of positions (a 4x4 table read as 2x8 rows would scramble the rows).
    A non-square count without ``checkpoint_grid`` is taken as the model's own grid when the
    shapes agree (a table this code saved from the same model).
    """
    value = loaded[_POSEMBED]
    present = [k for k in _PREFIX_TOKENS if k in loaded]
    if len(present) != model.num_prefix_tokens:
        raise ValueError(
            f"checkpoint has {len(present)} class/distillation token(s) {present} before the "
            f"patches but the model has {model.num_prefix_tokens} (classifier="
            f"{model.classifier!r}, distillation_token={model.distillation_token}); build the "
            "model with the checkpoint's classifier")
    num_positions = value.shape[1] - model.num_prefix_tokens
    old_grid = checkpoint_grid or _square_grid(num_positions)
    if old_grid is None and num_positions == model.grid_size[0] * model.grid_size[1]:
        return value
    if old_grid is not None and tuple(old_grid) == tuple(model.grid_size):
        return value
    resized = resize_posembed(value, model.num_prefix_tokens, model.grid_size, old_grid)
    logging.info("%s: resized the %s grid to %s: %s -> %s", _POSEMBED, old_grid,
                 model.grid_size, value.shape, resized.shape)
    return resized


def load_pretrained(path: str, model: VisionTransformer,
                    image_size: int | tuple[int, int] | None = None,
                    checkpoint_grid: tuple[int, int] | None = None) -> dict[str, Any]:
    """Parameters for ``model`` from an official-layout ``.npz``.

    - The head is kept when its shape matches ``model.num_classes``; otherwise a fresh zero
      head starts (as the official fine-tuning code does).
    - ``pre_logits`` is dropped when ``model.representation_size`` is None.
    - The position-embedding grid is resized when the model's grid (from
      ``image_size``, default ``model.image_size``) differs from the checkpoint's
      (``checkpoint_grid`` ``(height, width)`` in patches; by default square, as in every
      official checkpoint). A checkpoint with another classifier (class token or not,
      distillation token or not) is refused with a ``ValueError`` saying so.
    - Missing keys raise ``ValueError`` listing them; so does any shape that disagrees
      (naming key, checkpoint shape and expected shape). Unexpected keys are logged.

    Returns nested parameters in ``model.param_dtype``, scanned when ``model.scan_layers``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"checkpoint {path!r} does not exist (official checkpoints: {OFFICIAL_CHECKPOINTS};"
            " download them on a connected machine)")
    if image_size is not None:
        model = model.clone(image_size=image_size)
    with np.load(path, allow_pickle=False) as data:
        loaded = {key: data[key] for key in data.files}
    loaded = canonical_block_names(unstack_scanned_blocks(loaded))

    template_model = model.clone(scan_layers=False)
    dummy = np.zeros((1, *(to_pair(model.image_size)), model.num_channels), np.float32)
    shapes = jax.eval_shape(template_model.init, jax.random.key(0), dummy)["params"]
    expected = {k: v for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}

    params, problems = {}, []
    missing = [k for k in expected if k not in loaded and not k.startswith("head")]
    if missing:
        raise ValueError(f"checkpoint {path} is missing {len(missing)} parameter(s) the model "
                         f"needs: {missing[:20]}")
    for key, spec in expected.items():
        if key.startswith(("head/", "head_dist/")):
            value = loaded.get(key)
            if value is None or value.shape != spec.shape:
                logging.info("%s: starting a new zero head %s (checkpoint has %s)", key,
                             spec.shape, None if value is None else value.shape)
                value = np.zeros(spec.shape, np.float32)
        elif key == _POSEMBED:
            value = loaded[key]
            if value.ndim != 3 or value.shape[-1] != spec.shape[-1]:
                problems.append(f"{key}: checkpoint {value.shape} vs model {spec.shape}")
                continue
            value = _fitted_posembed(loaded, model, checkpoint_grid)
        else:
            value = loaded[key]
        if value.shape != spec.shape:
            problems.append(f"{key}: checkpoint {value.shape} vs model {spec.shape}")
            continue
        params[key] = value.astype(model.param_dtype)
    if problems:
        raise ValueError(f"checkpoint {path} does not fit this model (another architecture?); "
                         f"{len(problems)} shape mismatch(es): " + "; ".join(problems[:20]))
    unexpected = sorted(set(loaded) - set(expected))
    dropped = [k for k in unexpected if k.startswith("pre_logits")]
    if dropped:
        logging.info("dropping %s: the model has no representation layer", dropped)
    others = [k for k in unexpected if k not in dropped]
    if others:
        logging.warning("ignoring %d checkpoint entries the model does not use: %s",
                        len(others), others[:20])
    if model.scan_layers:
        params = stack_blocks(params, model.num_layers)
    return unflatten_params(params)
