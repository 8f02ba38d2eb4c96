"""The official ViT variants under their official names, and ``create_model``.

Widths, depths, heads and MLP sizes are those of google-research/vision_transformer
(``vit_jax/configs/models.py``) and Table 1 of Dosovitskiy et al. (2021); ViT-Ti and ViT-S
are the DeiT / "How to train your ViT" sizes.
"""

from __future__ import annotations

import difflib
from typing import Any

from vit.model import VisionTransformer

_SIZES = {
    "Ti": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "H": dict(hidden_size=1280, num_layers=32, num_heads=16, mlp_dim=5120),
}
_OFFICIAL = ["Ti_16", "S_16", "S_32", "B_16", "B_32", "B_8", "L_16", "L_32", "H_14"]

VIT_VARIANTS: dict[str, dict[str, Any]] = {
    f"ViT-{size_patch}": dict(
        **_SIZES[size_patch.split("_")[0]], patch_size=int(size_patch.split("_")[1])
    )
    for size_patch in _OFFICIAL
}
# Small sizes for tests and the offline default experiment (not official).
VIT_VARIANTS["ViT-micro"] = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64,
                                 patch_size=4)


def create_model(name: str, num_classes: int, **overrides: Any) -> VisionTransformer:
    """A ``VisionTransformer`` of the named variant (e.g. ``"ViT-B_16"``).

    ``overrides`` set any field of ``VisionTransformer`` (``image_size=384``,
    ``classifier="gap"``, ``dtype=jnp.bfloat16``, ``distillation_token=True``, ...).
    Raises ``ValueError`` for an unknown name, listing the known ones.
    """
    if name not in VIT_VARIANTS:
        close = difflib.get_close_matches(name, VIT_VARIANTS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown ViT model name {name!r}{hint}; known: {list(VIT_VARIANTS)}")
    fields = set(VisionTransformer.__dataclass_fields__) - {"parent", "name"}
    unknown = set(overrides) - fields - {"parent", "name"}
    if unknown:
        raise ValueError(
            f"unknown VisionTransformer field(s) {sorted(unknown)}; known: {sorted(fields)}")
    return VisionTransformer(num_classes=num_classes, **{**VIT_VARIANTS[name], **overrides})
