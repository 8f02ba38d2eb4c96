"""grain loaders: endless shuffled training batches and one padded pass over an eval split.

Both read only this host's shard (``process_index`` of ``process_count``), so on a pod each
host touches its own examples. Training iterators are grain ``DatasetIterator``s: their
position is saved with ``grain.checkpoint.CheckpointSave`` (or ``get_state``/``set_state``) and
a restored iterator yields exactly the batches the original would have.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

Batch = dict[str, np.ndarray]


class EpochShuffle(grain.MapDataset):
    """The parent repeated forever, each epoch in its own random order.

    Element ``i`` is element ``perm_e[(i mod n) // repeats]`` of the parent, ``e = i // n``,
    where ``perm_e = numpy.random.default_rng([seed, e]).permutation(n)``: a pure function of
    the index, so every host and a restored iterator agree on the order.

    ``repeats > 1`` is DeiT's repeated augmentation (Hoffer et al., 2020; DeiT's
    ``RASampler``): an epoch of ``n`` examples holds the first ``ceil(n / repeats)`` images of
    its permutation, each ``repeats`` times in a row, so in one global batch; a random
    augmentation seeded per example index gives every copy its own crop and colour.

    Written here instead of grain's ``shuffle().repeat()`` because that draws each index
    through ``index_shuffle``, which cost 0.5 ms per example on a 2-core CPU (cProfile, grain
    0.2.18): 70 ms of a 128-image digits batch, more than reading and decoding it. One
    permutation per epoch costs O(n) once (about 20 ms for ImageNet's 1.28M) and the last two
    are kept.
    """

    def __init__(self, parent: grain.MapDataset, seed: int, repeats: int = 1) -> None:
        super().__init__(parent)
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed={seed} must be in [0, 2**32)")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats={repeats!r} must be an integer >= 1 (1: no repetition)")
        self._seed, self._repeats = int(seed), repeats
        self._permutations: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # grain's prefetch threads read concurrently

    def __getstate__(self) -> dict[str, Any]:
        # grain pickles the pipeline into each worker process (worker_count > 0): a lock
        # cannot be pickled, and the cached permutations are cheap to recompute there.
        state = self.__dict__.copy()
        del state["_lock"]
        state["_permutations"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return f"EpochShuffle(seed={self._seed}, repeats={self._repeats})"

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            permutation = self._permutations.get(epoch)
            if permutation is None:
                rng = np.random.default_rng([self._seed, epoch])
                permutation = rng.permutation(len(self._parent))
                self._permutations = {e: p for e, p in self._permutations.items()
                                      if e >= epoch - 1}
                self._permutations[epoch] = permutation
            return permutation

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, position = divmod(index, len(self._parent))
        return self._parent[int(self._permutation(epoch)[position // self._repeats])]


def _check_sharding(global_batch_size: int, process_index: int, process_count: int,
                    field: str) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count="
                         f"{process_count})")
    if global_batch_size < 1 or global_batch_size % process_count:
        raise ValueError(f"{field}={global_batch_size} must be a positive multiple of the "
                         f"number of hosts ({process_count})")
    return global_batch_size // process_count


def _apply(dataset: Any, transforms: Sequence[Any]) -> Any:
    for transform in transforms:
        if isinstance(transform, grain.transforms.RandomMap):
            dataset = dataset.random_map(transform)
        elif isinstance(transform, grain.transforms.Filter):
            # A MapDataset holds None where the filter rejects an example; to_iter_dataset
            # skips those.
            dataset = dataset.filter(_RejectionGuard(transform))
        else:
            dataset = dataset.map(transform)
    return dataset


class _RejectionGuard(grain.transforms.Filter):
    """A filter that raises, naming itself, once it has rejected ``limit`` examples in a row.

    Why not grain's own check alone (``filter_raise_threshold_ratio``, set on the training
    stream): its message names a prefetch iterator, not the filter nor the setting that
    rejects everything (a ``max_length`` shorter than every sentence, say). A filter's
    ``rejection_hint``, when it has one, ends the message. With prefetch threads the order of
    calls is approximate, so "in a row" is too; grain's check stays as the backstop.
    """

    def __init__(self, inner: grain.transforms.Filter, limit: int = 1000) -> None:
        self.inner, self.limit, self._rejected_in_a_row = inner, limit, 0

    def filter(self, element: Any) -> bool:
        kept = bool(self.inner.filter(element))
        self._rejected_in_a_row = 0 if kept else self._rejected_in_a_row + 1
        if self._rejected_in_a_row >= self.limit:
            hint = getattr(self.inner, "rejection_hint", "")
            raise ValueError(f"the training filter {self.inner!r} rejected {self.limit} "
                             f"examples in a row: it keeps (almost) nothing of this dataset"
                             + (f"; {hint}" if hint else ""))
        return kept


def _filters(transforms: Sequence[Any]) -> list[Any]:
    return [t for t in transforms if isinstance(t, grain.transforms.Filter)]


class _TrimPadding(grain.transforms.Map):
    """Drops the trailing zeros of the packed keys (packing needs unpadded sequences)."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = tuple(keys)

    def map(self, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.trim_zeros(np.asarray(v), "b") if k in self.keys else v
                for k, v in example.items()}


# Batches read ahead by each process. The elements grain prefetches here are whole batches
# (batching happens before ``to_iter_dataset``), and grain's default read-ahead of 500
# elements, sized for single examples of 1-10 KiB, would hold 500 batches per host: about
# 290 GiB for configs/vit_imagenet.py's 1024 float32 224 px images on one host. A few batches
# keep the accelerator fed while bounding host memory.
READ_AHEAD_BATCHES = 4


def _batch_read_options(worker_count: int) -> grain.ReadOptions:
    """One thread per batch read ahead: a thread computes a whole batch, so threads beyond the
    buffer would idle. With worker processes the parallelism is theirs; each then reads one
    batch ahead (plus grain's per-worker output buffer of one), so host memory stays at about
    ``2 * worker_count`` batches."""
    ahead = READ_AHEAD_BATCHES if worker_count == 0 else 1
    return grain.ReadOptions(num_threads=ahead, prefetch_buffer_size=ahead)


def _check_flags_parsed(worker_count: int) -> None:
    """grain's worker processes read absl flags; unparsed, the first batch fails deep inside
    grain with UnparsedFlagAccessError, so say here what to do."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        raise ValueError(
            f"worker_count={worker_count} starts grain worker processes, which read absl "
            "flags, but they are not parsed: run under absl.app.run (as trainer.main does) "
            "or call absl.flags.FLAGS.mark_as_parsed() first, or use worker_count=0")


def make_train_loader(source: Any, *, global_batch_size: int, transforms: Sequence[Any] = (),
                      seed: int = 0, process_index: int = 0, process_count: int = 1,
                      worker_count: int = 0, pack_length: int | None = None,
                      pack_keys: Sequence[str] = ("inputs", "targets"),
                      aug_repeats: int = 1) -> Any:
    """Endless host-local batches ``{key: [global_batch_size // process_count, ...]}``.

    All hosts agree on one global order, reshuffled every epoch from ``seed``; global batch
    ``b`` is examples ``b·B .. (b+1)·B - 1`` of it, and host ``h`` reads (and transforms) only
    its contiguous slice of each global batch. The global batches, and random augmentations
    (seeded per example), are therefore the same whatever the number of hosts: one process
    with 8 devices trains exactly like 2 processes with 4. ``worker_count > 0`` moves the
    transforms to that many processes. Returns a grain ``IterDataset``; ``iter()`` of it is
    the checkpointable iterator. Each process reads at most ``READ_AHEAD_BATCHES`` batches
    ahead of the consumer (one with worker processes).

    ``aug_repeats``: DeiT's repeated augmentation, each image that many times in a row, each
    copy augmented on its own (``EpochShuffle``'s ``repeats``); 1 (or timm's 0): off.

    ``pack_length``: sequences (``pack_keys``, zero-padded) are packed into rows of that many
    tokens with grain's first-fit packing, which adds ``<key>_segment_ids`` and
    ``<key>_positions``; each host then packs every ``process_count``-th example.

    ``transforms`` may include ``grain.transforms.Filter``s, which drop the examples they
    reject. A batch is then no fixed slice of the global order: as with packing, each host
    transforms every ``process_count``-th example and batches those kept, so the batches
    depend on the number of hosts (still a pure function of the seed, the host and the host
    count, and restored exactly from the iterator state). A window of 1,000 examples with none
    kept raises (grain's ``filter_raise_threshold_ratio``) instead of looping forever.
    """
    local_batch = _check_sharding(global_batch_size, process_index, process_count,
                                  "batch_size")
    if len(source) < global_batch_size:
        raise ValueError(f"the dataset has {len(source)} examples, fewer than one batch of "
                         f"{global_batch_size}: lower batch_size")
    dataset = EpochShuffle(grain.MapDataset.source(source).seed(seed), seed,
                           repeats=max(aug_repeats, 1))
    filters = _filters(transforms)
    if pack_length or filters:
        # A batch holds however many examples were packed or kept: not a fixed slice of the
        # global order, so each host takes every process_count-th example.
        dataset = _apply(dataset[process_index::process_count], transforms)
        if pack_length:
            dataset = dataset.map(_TrimPadding(pack_keys)).to_iter_dataset()
            iterable = grain.experimental.FirstFitPackIterDataset(
                dataset, length_struct={key: pack_length for key in pack_keys},
                num_packing_bins=local_batch, seed=seed)
        else:
            iterable = dataset.to_iter_dataset()
        iterable = iterable.batch(local_batch, drop_remainder=True)
        if filters:
            # The stream is endless: a filter rejecting everything would hang it silently
            # (grain only warns, once a minute, past 90% rejected).
            iterable = grain.experimental.WithOptionsIterDataset(
                iterable, grain.experimental.DatasetOptions(filter_raise_threshold_ratio=1.0))
    else:
        # Lazy: a host only reads and transforms the examples of its own slices.
        dataset = _apply(dataset, transforms).batch(local_batch, drop_remainder=True)
        iterable = dataset[process_index::process_count].to_iter_dataset(
            _batch_read_options(worker_count))
    if worker_count > 0:
        _check_flags_parsed(worker_count)
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iterable


def _pad_batch(examples: list[dict[str, np.ndarray]], batch_size: int,
               template: dict[str, np.ndarray]) -> Batch:
    real = len(examples)
    batch = {k: np.stack([e[k] for e in examples]) if real else
             np.zeros((0, *np.shape(template[k])), np.asarray(template[k]).dtype)
             for k in template}
    pad = batch_size - real
    if pad:
        batch = {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)])
                 for k, v in batch.items()}
    batch["mask"] = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
    return batch


def make_eval_batches(source: Any, *, global_batch_size: int, transforms: Sequence[Any] = (),
                      process_index: int = 0, process_count: int = 1,
                      seed: int = 0) -> Iterator[Batch]:
    """One pass over this host's shard in order; nothing is dropped.

    The last batch is padded with zeros to full size and every batch has ``mask`` float32
    ``[batch]`` (1 = real example). All hosts yield the same number of batches (padding with
    fully masked ones when shards are uneven), so collective evaluation never waits forever.
    """
    local_batch = _check_sharding(global_batch_size, process_index, process_count,
                                  "eval_batch_size")
    filters = _filters(transforms)
    if filters:
        raise ValueError(f"evaluation keeps every example, but transforms include filters "
                         f"{filters}: pass them to the training loader only")
    total = len(source)
    if total == 0:
        raise ValueError("the eval split is empty")
    largest_shard = -(-total // process_count)
    num_batches = -(-largest_shard // local_batch)
    dataset = _apply(grain.MapDataset.source(source)[process_index::process_count].seed(seed),
                     transforms)
    template = dataset[0] if len(dataset) else _apply(
        grain.MapDataset.source(source).seed(seed), transforms)[0]
    for start in range(0, num_batches * local_batch, local_batch):
        examples = [dataset[i] for i in range(start, min(start + local_batch, len(dataset)))]
        yield _pad_batch(examples, local_batch, template)
