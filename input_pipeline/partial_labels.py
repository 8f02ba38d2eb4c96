"""A training source of which only a part is labelled: for distillation on a transfer set.

Hinton et al. (2015) distil on a "transfer set" that may be unlabelled, and Beyer et al. (2022)
match the teacher's function on images the student has no labels for. Here the labelled and
the unlabelled examples are one random-access source for grain, so one shuffled order, the
iterator checkpoints and multi-host sharding all work as for a plain split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class PartiallyLabelled:
    """The examples of ``labelled`` followed by those of ``unlabelled``.

    Every example gets ``label_weight`` float32 (1.0 labelled, 0.0 unlabelled). An unlabelled
    example's ``label`` is replaced by zeros of the labelled examples' label shape and dtype (a
    class id, or a ``[K]`` multi-label or soft target), so nothing downstream can learn from a
    label the setting says is unknown and both parts batch together; it is added when the
    unlabelled source has none.

    Only ``keys`` (and ``label_weight``) are kept: TFDS examples also carry strings
    (``file_name``, ``id``) that JAX cannot hold and variable-size arrays
    (``segmentation_mask``) that cannot be batched, and distillation's iterator runs only the
    preprocessing string between this source and the batcher. ``keys=None`` keeps every key.

    The two sources must be disjoint (e.g. TFDS splits ``train[:10%]`` and ``train[10%:]``);
    that is the caller's promise, as it cannot be checked from the examples.
    """

    def __init__(self, labelled: Any, unlabelled: Any,
                 keys: Sequence[str] | None = ("image", "label")) -> None:
        if len(labelled) == 0:
            raise ValueError("the labelled source is empty: a partially labelled training set "
                             "needs at least one labelled example")
        if len(unlabelled) == 0:
            raise ValueError("the unlabelled source is empty; drop it instead")
        self.labelled, self.unlabelled = labelled, unlabelled
        first = labelled[0]
        if "label" not in first:
            raise ValueError(f"labelled examples need a 'label'; got keys {sorted(first)}")
        # Shape and dtype of the labelled examples' labels: an unlabelled example's
        # replacement must stack with them in one batch.
        self._zero_label = np.zeros_like(np.asarray(first["label"]))
        if keys is not None and "label" not in keys:
            raise ValueError(f"keys={tuple(keys)} must include 'label' (it is kept, or "
                             "replaced by zeros, for every example)")
        self.keys = None if keys is None else tuple(keys)

    def __len__(self) -> int:
        return len(self.labelled) + len(self.unlabelled)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        if index < len(self.labelled):
            example = dict(self.labelled[index])
            example["label_weight"] = np.float32(1.0)
        else:
            example = dict(self.unlabelled[index - len(self.labelled)])
            example["label"] = self._zero_label.copy()  # a copy: callers may write to it
            example["label_weight"] = np.float32(0.0)
        if self.keys is None:
            return example
        missing = [k for k in self.keys if k not in example]
        if missing:
            raise ValueError(f"example {index} has no {missing} (keys={self.keys}); it has "
                             f"keys {sorted(example)}")
        return {k: example[k] for k in (*self.keys, "label_weight")}

    def __repr__(self) -> str:
        return (f"PartiallyLabelled({len(self.labelled)} labelled, "
                f"{len(self.unlabelled)} unlabelled)")
