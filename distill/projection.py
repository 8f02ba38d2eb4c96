"""A learned projection from the student's width to the teacher's, for feature distillation."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class FeatureProjection(nn.Module):
    """``[..., student_width]`` -> ``[..., teacher_width]``: TinyBERT's W_h (one Dense).

    Used when a narrow student's hidden states are compared with a wide teacher's
    (``distill.hidden_state_mse(..., projection=...)``). Its parameters belong to the student's
    train state: they are initialised and updated with the student's, the teacher never sees
    them, and they are thrown away after distillation (the deployed student has no projection).

    Attributes:
      teacher_width: output width D_t.
      use_bias: whether the Dense has a bias (TinyBERT's W_h has one).
      dtype: computation dtype (``None``: from the inputs); parameters stay in float32.
      kernel_init: initialiser of the ``[student_width, teacher_width]`` kernel.
    """

    teacher_width: int
    use_bias: bool = True
    dtype: Any = None
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, student_hidden: jax.Array) -> jax.Array:
        """``student_hidden`` ``[..., student_width]`` -> ``[..., teacher_width]``."""
        return nn.Dense(self.teacher_width, use_bias=self.use_bias, dtype=self.dtype,
                        param_dtype=jnp.float32, kernel_init=self.kernel_init,
                        name="projection")(student_hidden)
