"""Vision Transformer models and the official ``.npz`` checkpoints (imports transformer)."""

from vit.checkpoint import (
    flatten_params,
    load_pretrained,
    resize_posembed,
    save_npz,
    unflatten_params,
)
from vit.model import CLASSIFIERS, VisionTransformer
from vit.variants import VIT_VARIANTS, create_model

__all__ = [
    "CLASSIFIERS", "VIT_VARIANTS", "VisionTransformer", "create_model", "flatten_params",
    "load_pretrained", "resize_posembed", "save_npz", "unflatten_params",
]
