"""Knowledge-distillation objectives: pure functions of logits, hidden states and attention
maps, and the learned feature projection (imports only jax, optax and flax; the
teacher/student training step is ``trainer/tasks/distillation.py``)."""

from distill.losses import (
    DISTILLATION_TYPES,
    REDUCTIONS,
    attention_kl,
    deit_distillation_token_loss,
    deit_inference_logits,
    hard_distillation_loss,
    hidden_state_cosine,
    hidden_state_mse,
    hinton_loss,
    soft_distillation_loss,
    top1_agreement,
)
from distill.projection import FeatureProjection

__all__ = [
    "DISTILLATION_TYPES",
    "REDUCTIONS",
    "FeatureProjection",
    "attention_kl",
    "deit_distillation_token_loss",
    "deit_inference_logits",
    "hard_distillation_loss",
    "hidden_state_cosine",
    "hidden_state_mse",
    "hinton_loss",
    "soft_distillation_loss",
    "top1_agreement",
]
