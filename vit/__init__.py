"""Vision Transformer models and the official ``.npz`` checkpoints (imports transformer)."""

from vit.model import CLASSIFIERS, VisionTransformer
from vit.variants import VIT_VARIANTS, create_model

__all__ = ["CLASSIFIERS", "VIT_VARIANTS", "VisionTransformer", "create_model"]
