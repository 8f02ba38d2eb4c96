"""The official ViT ``.npz`` checkpoints (google-research/vision_transformer layout).

A checkpoint is a flat ``.npz`` whose keys join the parameter path with ``/``:
``embedding/kernel`` ``[ph, pw, C, D]``, ``cls`` ``[1, 1, D]``,
``Transformer/posembed_input/pos_embedding`` ``[1, N + 1, D]``,
``Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,value,out},
LayerNorm_2, MlpBlock_3/{Dense_0, Dense_1}}``, ``Transformer/encoder_norm``, ``pre_logits``
and ``head``. ``VisionTransformer`` uses exactly these names, so loading is a key-by-key copy
plus three adaptations, as in the official ``checkpoint.load_pretrained``: a new head (the
model's own initial one), dropping ``pre_logits``, and resizing the position grid.
The official checkpoints live at ``gs://vit_models/imagenet21k/ViT-B_16.npz`` (and
``gs://vit_models/augreg/...``); download them on a connected machine (``gsutil cp``).
"""

from __future__ import annotations

import math
import os
import re
import uuid
import zipfile
import zlib
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
# Not a parameter: the (height, width) patch grid of the position table, written by
# save_npz(grid_size=...) because a table's length alone cannot tell 4x9 from 6x6. A key at
# the top level, outside the parameter tree, which the official and timm loaders skip.
POSEMBED_GRID = "posembed_grid"
# Parameters of the tokens that precede the patches in the position table, in that order.
_PREFIX_TOKENS = ("cls", "dist_token")
_TOKEN_KINDS = {"cls": "class token", "dist_token": "distillation token"}
# Each head and the representation layer it reads (present when representation_size is set).
_HEADS = {"head": "pre_logits", "head_dist": "pre_logits_dist"}
_BLOCK_INDEX = re.compile(r"Transformer/encoderblock_(\d+)/")


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


def save_npz(params: Any, path: str, *, grid_size: tuple[int, int] | None = None) -> None:
    """Writes ``params`` in the official flat layout (per-layer blocks even from a scanned
    model), readable by the official code and by ``load_pretrained``.

    ``grid_size`` (the model's ``grid_size``, ``(height, width)`` in patches) is recorded
    beside the parameters as ``posembed_grid``, so that ``load_pretrained`` reads the
    position table on that grid. It matters for a non-square grid whose number of positions
    is a square (4x9 = 36 = 6x6): unrecorded, such a table is read as the square grid of the
    official checkpoints and resized.

    Atomic: the archive is written to a temporary file next to ``path``, synced, then renamed
    over it, so a save that fails midway (disk full, preemption) leaves any old file intact.
    """
    flat = unstack_scanned_blocks(flatten_params(jax.device_get(params)))
    if grid_size is not None:
        grid = np.asarray(grid_size, np.int64)
        if grid.shape != (2,) or np.any(grid < 1):
            raise ValueError(f"save_npz: grid_size={grid_size!r} must be the model's "
                             "(height, width) patch grid, two positive integers")
        flat[POSEMBED_GRID] = grid
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Same directory: os.replace is only atomic within one file system. "xb" (not mkstemp)
    # so the file gets the usual umask permissions rather than 0600.
    temporary = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "xb") as f:
            np.savez(f, **flat)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Makes a rename in ``directory`` durable; best effort (not every OS or file system
    can open or sync a directory, and the data itself is already synced)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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

    Resized whenever the checkpoint's grid (``checkpoint_grid``, else the grid recorded by
    ``save_npz``, else square when its number of positions is a square, as in every official
    checkpoint) differs from the model's, even at an equal number of positions (a 4x4 table
    read as 2x8 rows would scramble the rows). A non-square count without either is taken as
    the model's own grid when the shapes agree (a table this code saved from the same model).
    """
    value = loaded[_POSEMBED]
    num_positions = value.shape[1] - model.num_prefix_tokens
    recorded = tuple(int(n) for n in loaded[POSEMBED_GRID]) if POSEMBED_GRID in loaded else None
    old_grid = checkpoint_grid or recorded or _square_grid(num_positions)
    height, width = model.grid_size
    if (checkpoint_grid is None and recorded is None and _square_grid(num_positions)
            and height != width and num_positions == height * width):
        logging.warning(
            "%s: %d positions read as a %s grid and resized to the model's %s; if the table "
            "was saved from a %s model, pass checkpoint_grid=%s (save_npz(..., grid_size=) "
            "records it)", _POSEMBED, num_positions, old_grid, model.grid_size,
            model.grid_size, model.grid_size)
    if old_grid is None and num_positions == height * width:
        return value
    if old_grid is not None and tuple(old_grid) == (height, width):
        return value
    resized = resize_posembed(value, model.num_prefix_tokens, model.grid_size, old_grid)
    logging.info("%s: resized the %s grid to %s: %s -> %s", _POSEMBED, old_grid,
                 model.grid_size, value.shape, resized.shape)
    return resized


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``; a file that is not one (truncated by a failed
    copy, a ``.npy``, pickled data) raises ``ValueError`` naming the path."""
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:  # members are read lazily: a truncated one fails here, inside the try
                return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        raise ValueError(f"checkpoint {path!r} is not a readable .npz file "
                         f"({type(error).__name__}: {error}); re-download or re-export it") \
            from error
    raise ValueError(f"checkpoint {path!r} holds a single array (.npy), not an .npz archive of "
                     "named parameters")


def _expected_shapes(model: VisionTransformer) -> dict[str, jax.ShapeDtypeStruct]:
    """``{"a/b/kernel": shape}`` of ``model``'s unscanned parameters, without computing them."""
    template = model.clone(scan_layers=False)
    dummy = np.zeros((1, *(to_pair(model.image_size)), model.num_channels), np.float32)
    shapes = jax.eval_shape(template.init, jax.random.key(0), dummy)["params"]
    return dict(traverse_util.flatten_dict(shapes, sep="/"))


def _fresh_heads(model: VisionTransformer, names: list[str]) -> dict[str, np.ndarray]:
    """The model's own initial ``{name}/kernel`` ``[width, num_classes]`` and ``{name}/bias``
    ``[num_classes]`` for each head in ``names`` (zero kernel, ``head_bias_init`` bias).

    Taken from ``model.init`` rather than rebuilt here so they follow the model's
    initialisers; under ``jit`` XLA drops everything the heads do not depend on, so this costs
    a trace, not a full initialisation.
    """
    template = model.clone(scan_layers=False)
    dummy = np.zeros((1, *(to_pair(model.image_size)), model.num_channels), np.float32)

    def heads(key):
        params = template.init(key, dummy)["params"]
        return {name: params[name] for name in names}

    return flatten_params(jax.jit(heads)(jax.random.key(0)))


def _check_not_big_vision(path: str, loaded: dict[str, np.ndarray]) -> None:
    """big_vision saves ``params/img/...`` with other names and a ``pos_embedding`` without the
    class token's slot: no key would match, so say which layout it is instead."""
    nested = sorted(k for k in loaded if k.startswith("params/"))
    if nested:
        raise ValueError(
            f"checkpoint {path} has keys under 'params/' (e.g. {nested[:3]}): the big_vision "
            "layout is not supported; convert to the official vision_transformer layout "
            "(keys such as 'embedding/kernel', 'cls', "
            f"'{_POSEMBED}', 'Transformer/encoderblock_0/...', 'head/kernel')")


def _check_prefix_tokens(path: str, loaded: dict[str, np.ndarray],
                         model: VisionTransformer) -> None:
    """Refuses a checkpoint whose class/distillation tokens are not the model's (another
    classifier), naming the token kinds; run before the missing-key check, which would only
    say ``cls`` or ``dist_token`` is missing."""
    if _POSEMBED not in loaded:  # not this layout at all: the missing-key check says so
        return
    present = [k for k in _PREFIX_TOKENS if k in loaded]
    wanted = ["cls"] * (model.classifier == "token") + ["dist_token"] * model.distillation_token
    if present == wanted:
        return
    difference = "; ".join(
        [f"the checkpoint has no {_TOKEN_KINDS[k]} ({k!r})" for k in wanted if k not in present]
        + [f"the model has no {_TOKEN_KINDS[k]} ({k!r})" for k in present if k not in wanted])
    raise ValueError(
        f"checkpoint {path} has {len(present)} class/distillation token(s) {present} before "
        f"the patches but the model has {len(wanted)} (classifier={model.classifier!r}, "
        f"distillation_token={model.distillation_token}): {difference}; build the model with "
        f"the checkpoint's classifier={'token' if 'cls' in present else 'gap'!r}, "
        f"distillation_token={'dist_token' in present}")


def _check_missing(path: str, loaded: dict[str, np.ndarray], expected: dict[str, Any]) -> None:
    """Every parameter but the heads (which may start anew) must be in the checkpoint."""
    missing = [k for k in expected if k not in loaded and k.split("/")[0] not in _HEADS]
    if missing:
        raise ValueError(
            f"checkpoint {path} is missing {len(missing)} parameter(s) the model needs: "
            f"{missing[:20]}; the checkpoint has {len(loaded)} entries, e.g. "
            f"{sorted(loaded)[:5]}")


def _check_depth(path: str, loaded: dict[str, np.ndarray], model: VisionTransformer,
                 allow_fewer_layers: bool) -> None:
    """A deeper checkpoint is refused unless ``allow_fewer_layers``: its extra blocks would
    be dropped and the model would compute something else than the checkpoint did."""
    indices = [int(m.group(1)) for m in map(_BLOCK_INDEX.match, loaded) if m]
    depth = max(indices, default=-1) + 1
    if depth > model.num_layers and not allow_fewer_layers:
        raise ValueError(
            f"checkpoint {path} has {depth} encoder layers (Transformer/encoderblock_0.."
            f"{depth - 1}) but the model has num_layers={model.num_layers}; build the model "
            f"with num_layers={depth}, or pass allow_fewer_layers=True to load only the first "
            f"{model.num_layers}")


def _head_mismatch(loaded: dict[str, np.ndarray], expected: dict[str, Any], name: str,
                   model: VisionTransformer) -> str | None:
    """Why the checkpoint's head ``name`` cannot serve the model (None when it can). The head
    is judged whole: a kernel that does not fit makes its bias meaningless too."""
    kernel, bias = loaded.get(f"{name}/kernel"), loaded.get(f"{name}/bias")
    want_kernel, want_bias = expected[f"{name}/kernel"].shape, expected[f"{name}/bias"].shape
    if kernel is None or bias is None:
        return f"the checkpoint lacks {name}/kernel or {name}/bias"
    if kernel.shape != want_kernel or bias.shape != want_bias:
        return (f"checkpoint {name}/kernel {kernel.shape}, {name}/bias {bias.shape} vs model "
                f"{want_kernel}, {want_bias}")
    pre_logits = _HEADS[name]
    if model.representation_size is None and any(k.startswith(pre_logits + "/") for k in loaded):
        # The official code resets the head here too: it was trained on tanh(pre_logits(x)).
        return (f"the checkpoint's {pre_logits} layer is dropped (representation_size=None) "
                f"and its head was trained on that layer's output")
    return None


def _heads(path: str, loaded: dict[str, np.ndarray], expected: dict[str, Any],
           model: VisionTransformer, allow_new_head: bool,
           new_head: bool) -> dict[str, np.ndarray]:
    """``{"head/kernel": [width, num_classes], "head/bias": [num_classes], ...}`` for each
    head of the model: the checkpoint's when it fits (and not ``new_head``), else the model's
    own initial head."""
    names = [name for name in _HEADS if f"{name}/kernel" in expected]
    if new_head:
        logging.info("%s: starting the model's initial %s (new_head=True)", path, names)
        return _fresh_heads(model, names)
    mismatches = {name: _head_mismatch(loaded, expected, name, model) for name in names}
    replaced = [name for name in names if mismatches[name]]
    for name in replaced:
        kernel = loaded.get(f"{name}/kernel")
        shapes = (f"{name}/kernel: checkpoint {None if kernel is None else kernel.shape} vs "
                  f"model {expected[f'{name}/kernel'].shape} (num_classes={model.num_classes})")
        if not allow_new_head:
            raise ValueError(f"checkpoint {path}: {shapes}: {mismatches[name]}; the head must "
                             "come from the checkpoint (allow_new_head=False)")
        same_shape = kernel is not None and kernel.shape == expected[f"{name}/kernel"].shape
        # A head of the right shape being replaced is a surprise; a resized one is fine-tuning.
        log = logging.warning if same_shape else logging.info
        log("%s: starting the model's initial head instead (%s)", shapes, mismatches[name])
    flat = {f"{name}/{p}": loaded[f"{name}/{p}"] for name in names if name not in replaced
            for p in ("kernel", "bias")}
    if replaced:
        flat.update(_fresh_heads(model, replaced))
    return flat


def load_pretrained(path: str, model: VisionTransformer,
                    image_size: int | tuple[int, int] | None = None,
                    checkpoint_grid: tuple[int, int] | None = None, *,
                    allow_new_head: bool = True,
                    new_head: bool = False,
                    allow_fewer_layers: bool = False) -> dict[str, Any]:
    """Parameters for ``model`` from an official-layout ``.npz``.

    - The head (``head/kernel`` ``[width, num_classes]`` and ``head/bias`` ``[num_classes]``,
      judged together; likewise ``head_dist``) is kept when both shapes match the model's and
      the checkpoint's ``pre_logits`` is not dropped; otherwise the model's own initial head
      starts (zero kernel, ``head_bias_init`` bias), as the official fine-tuning code does.
      ``allow_new_head=False`` (loading a model to use as is, e.g. a distillation teacher)
      raises ``ValueError`` instead, naming ``head/kernel``, both shapes and ``num_classes``.
      ``new_head=True`` starts the model's initial heads even when the checkpoint's fit, as
      the official ``vit_jax`` fine-tuning always does (and big_vision's
      ``dont_load=["head/.*"]``): fine-tuning a checkpoint already trained on as many
      classes, e.g. an ImageNet-1k one on ImageNet-1k at 384 px or a CIFAR-10 one on another
      10-class task, starts from zero logits rather than the old classes' weights.
    - ``pre_logits`` is dropped when ``model.representation_size`` is None (and so is the
      head trained on it, see above).
    - The position-embedding grid is resized when the model's grid (from
      ``image_size``, default ``model.image_size``) differs from the checkpoint's
      (``checkpoint_grid`` ``(height, width)`` in patches; else the grid ``save_npz``
      recorded; else square, as in every official checkpoint). A checkpoint with another
      classifier (class token or not, distillation token or not) is refused with a
      ``ValueError`` saying so.
    - A checkpoint with more encoder layers than ``model.num_layers`` raises ``ValueError``
      unless ``allow_fewer_layers=True``, which keeps its first ``num_layers``.
    - Missing keys raise ``ValueError`` listing them; so does any shape that disagrees
      (naming key, checkpoint shape and expected shape), a file that is not an ``.npz`` and a
      big_vision checkpoint. Other unexpected keys are logged.

    Returns nested parameters in ``model.param_dtype``, scanned when ``model.scan_layers``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"checkpoint {path!r} does not exist (official checkpoints: {OFFICIAL_CHECKPOINTS};"
            " download them on a connected machine)")
    if new_head and not allow_new_head:
        raise ValueError("load_pretrained(new_head=True, allow_new_head=False) asks for a new "
                         "head and forbids one; pass at most one of them")
    if image_size is not None:
        model = model.clone(image_size=image_size)
    loaded = _read_npz(path)
    _check_not_big_vision(path, loaded)
    loaded = canonical_block_names(unstack_scanned_blocks(loaded))
    expected = _expected_shapes(model)
    _check_prefix_tokens(path, loaded, model)
    _check_missing(path, loaded, expected)
    _check_depth(path, loaded, model, allow_fewer_layers)

    heads = _heads(path, loaded, expected, model, allow_new_head, new_head)
    params, problems = {}, []
    for key, spec in expected.items():
        if key in heads:
            value = heads[key]
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
    _log_unused(loaded, expected)
    if model.scan_layers:
        params = stack_blocks(params, model.num_layers)
    return unflatten_params(params)


def _log_unused(loaded: dict[str, np.ndarray], expected: dict[str, Any]) -> None:
    unexpected = sorted(set(loaded) - set(expected) - {POSEMBED_GRID})
    dropped = [k for k in unexpected if k.split("/")[0] in _HEADS.values()]
    if dropped:
        logging.info("dropping %s: the model has no representation layer", dropped)
    others = [k for k in unexpected if k not in dropped]
    if others:
        logging.warning("ignoring %d checkpoint entries the model does not use: %s",
                        len(others), others[:20])
