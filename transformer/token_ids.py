"""Token ids checked at the model's boundary.

``nn.Embed`` looks ids up with ``jnp.take`` in its fill mode, which does not fail on a bad id:
an id ``>= vocab_size`` gets a row of NaNs (and greedy decoding then emits ``EOS``), and a
negative id silently wraps around to the last rows. So ids are checked before they reach a
table, wherever they are concrete (eager calls, the host side of ``make_decoder``). Inside
``jax.jit`` they are tracers whose values cannot be read; the data pipeline's tokenisers
produce them there.
"""

from __future__ import annotations

import jax
import numpy as np


def check_token_ids(ids, vocab_size: int, name: str, vocab_field: str = "vocab_size") -> None:
    """Raise ``ValueError`` naming ``name`` when concrete ``ids`` fall outside
    ``[0, vocab_size)``; traced (or not fully addressable) ids are left alone.

    Args:
      ids: integer token ids of any shape, e.g. ``[batch, length]``.
      vocab_size: rows of the embedding table the ids index.
      name: the argument's name, for the message (``"inputs"``, ``"token_type_ids"``).
      vocab_field: the field that sets ``vocab_size``, for the message.
    """
    if isinstance(ids, jax.core.Tracer) or not getattr(ids, "is_fully_addressable", True):
        return
    ids = np.asarray(ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must be integer token ids; got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(
            f"{name} token ids must be in [0, {vocab_size}) ({vocab_field}={vocab_size}); "
            f"got ids from {ids.min()} to {ids.max()}")
