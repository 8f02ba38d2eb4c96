"""A learned projection from the student's width to the teacher's, for feature distillation."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class FeatureProjection(nn.Module):
    """``[..., student_width]`` -> ``[..., teacher_width]`` (TinyBERT's W_h).

    Its parameters belong to the student's train state: they are trained with the student and
    thrown away after distillation.
    """

    teacher_width: int

    @nn.compact
    def __call__(self, student_hidden: jnp.ndarray) -> jnp.ndarray:
        return nn.Dense(self.teacher_width, name="projection")(student_hidden)
