"""grain input pipelines over random-access sources whose examples are
`{modality: float32 [D_m], ..., "label": int32}` (ArraySource, FeaturesSource, TfdsSource).

Training: this process's shard of the indices -> per epoch, one seeded permutation cut
into full batches of indices (the remainder dropped) -> one vectorised read per batch ->
transforms -> prefetching iterator. Handling whole batches (one permutation per epoch,
one fancy-indexing op per modality) keeps the pipeline far ahead of the training step;
shuffling, batching or reading example by example in Python did not (benchmarks/data.py).
The iterator walks a grain MapDataset of batch numbers, so its state is one position and
a resumed run continues on the exact next batch.

Evaluation: this process's shard in order, batched, the last batch padded with zeros and
a `mask` marking real examples, so every example is seen exactly once and every process
yields the same number of batches.

Batches are dicts `{modality: [B, D_m], "label": [B], "index": [B]}` (`index` is the
example's position in the source).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping, Sequence

import grain
import numpy as np


def read_batch(source, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `indices` of a source as a batch: `source.read_batch` when it has one (one
    fancy-indexing op per modality), else its examples stacked."""
    indices = np.asarray(indices, dtype=np.int64)
    if hasattr(source, "read_batch"):
        batch = source.read_batch(indices)
    else:
        rows = [source[int(i)] for i in indices]
        batch = {key: np.stack([r[key] for r in rows]) for key in rows[0]}
    batch["index"] = indices
    return batch


class ArraySource:
    """In-memory random-access source over row-aligned arrays (e.g. the UCI views).
    Float arrays become float32; integer arrays (token ids) keep their type."""

    def __init__(self, arrays: Mapping[str, np.ndarray], labels: np.ndarray | None = None):
        self.arrays = {m: np.asarray(a) if np.issubdtype(np.asarray(a).dtype, np.integer) else np.asarray(a, np.float32)
                       for m, a in arrays.items()}
        rows = {m: a.shape[0] for m, a in self.arrays.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(f"modalities must have the same number of rows; got {rows}")
        self.num_examples = next(iter(rows.values()))
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        if self.labels is not None and self.labels.shape != (self.num_examples,):
            raise ValueError(f"labels must have shape ({self.num_examples},); got {self.labels.shape}")

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.read_batch(index)

    def read_batch(self, indices) -> dict[str, np.ndarray]:
        batch = {m: a[indices] for m, a in self.arrays.items()}
        if self.labels is not None:
            batch["label"] = self.labels[indices]
        return batch


# ---- transforms ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianNoise(grain.transforms.RandomMap):
    """Adds N(0, (level * scale_m)^2) to the chosen modalities, `scale_m` being each
    feature's standard deviation on the train split (`feature_statistics`): the noise
    is relative to each modality's own scale (PMRL's noise study)."""

    modalities: Sequence[str]
    level: float
    scale: Mapping[str, np.ndarray]

    def random_map(self, batch, rng: np.random.Generator):
        out = dict(batch)
        for m in self.modalities:
            noise = rng.standard_normal(batch[m].shape) * (self.level * np.asarray(self.scale[m], np.float32))
            out[m] = (batch[m] + noise).astype(np.float32)
        return out


@dataclasses.dataclass(frozen=True)
class ModalityDropout(grain.transforms.RandomMap):
    """Zeroes each listed modality of each example independently with the given probability."""

    modalities: Sequence[str]
    probability: float

    def random_map(self, batch, rng: np.random.Generator):
        out = dict(batch)
        for m in self.modalities:
            keep = rng.random(batch[m].shape[0]) >= self.probability
            out[m] = batch[m] * keep[:, None].astype(batch[m].dtype)
        return out


def feature_statistics(source, modalities: Sequence[str], max_rows: int = 16384) -> dict[str, tuple]:
    """{modality: (mean [D], std [D])} of each float feature-vector modality of `source`
    (the train split), over at most `max_rows` rows spread evenly over it; float64 sums,
    float32 results. Other modalities (token ids, images) are left out."""
    rows = np.unique(np.linspace(0, len(source) - 1, min(len(source), max_rows)).astype(np.int64))
    statistics = {}
    for start in range(0, len(rows), 4096):
        batch = read_batch(source, rows[start : start + 4096])
        for m in modalities:
            x = batch[m]
            if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
                continue
            total, squares = statistics.get(m, (0.0, 0.0))
            statistics[m] = (total + x.sum(0, dtype=np.float64), squares + np.square(x, dtype=np.float64).sum(0))
    result = {}
    for m, (total, squares) in statistics.items():
        mean = total / len(rows)
        result[m] = (mean.astype(np.float32), np.sqrt(np.maximum(squares / len(rows) - mean**2, 0.0)).astype(np.float32))
    return result


# ---- pipelines -------------------------------------------------------------------------


_ENDLESS = 2**62  # batch numbers; grain reads lazily, so the length costs nothing


class _EpochBatchIndices:
    """Batch number -> the example indices of this process's rows of that global batch.
    Each epoch is a fresh seeded permutation of all examples, cut into full global
    batches (the remainder of an epoch is dropped); process p of P takes rows
    [p B/P, (p+1) B/P) of each. So the global batches do not depend on the number of
    processes, and each process reads only its rows. One numpy permutation per epoch
    instead of a Python call per example."""

    def __init__(self, num_examples: int, batch_size: int, seed: int, shard_index: int, shard_count: int):
        self.num_examples, self.batch_size, self.seed = num_examples, batch_size, seed
        self.global_batch_size = batch_size * shard_count
        self.rows = slice(shard_index * batch_size, (shard_index + 1) * batch_size)
        self.batches_per_epoch = num_examples // self.global_batch_size
        self._lock = threading.Lock()
        self._epoch, self._permutation = -1, None

    def __call__(self, batch_number: int) -> np.ndarray:
        epoch, position = divmod(int(batch_number), self.batches_per_epoch)
        with self._lock:  # grain's reader threads share this object
            if epoch != self._epoch:
                self._epoch = epoch
                self._permutation = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            batch = self._permutation[position * self.global_batch_size : (position + 1) * self.global_batch_size]
        return batch[self.rows]


def training_dataset(
    source,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    transforms: Sequence = (),
    prefetch_threads: int = 2,
) -> grain.IterDataset:
    """Endless batches of `batch_size` rows: this process's share of the global batch of
    `batch_size * shard_count`. Random transforms draw for the whole global batch and keep
    this process's rows, so that a batch is the same whatever the number of processes."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}); got {shard_index}")
    if len(source) < batch_size * shard_count:
        raise ValueError(f"the data holds {len(source)} examples, fewer than one global batch of "
                         f"{batch_size * shard_count}")
    batch_indices = _EpochBatchIndices(len(source), batch_size, seed, shard_index, shard_count)
    batches = grain.MapDataset.range(_ENDLESS).map(lambda b: read_batch(source, batch_indices(b)))
    for transform in transforms:
        if isinstance(transform, grain.transforms.RandomMap):
            batches = batches.random_map(_GlobalRows(transform, shard_index, shard_count), seed=seed)
        else:
            batches = batches.map(transform)
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=prefetch_threads, prefetch_buffer_size=4))


@dataclasses.dataclass(frozen=True)
class _GlobalRows(grain.transforms.RandomMap):
    """Runs a random transform as if on the whole global batch (this process's rows
    placed among zero rows) and keeps this process's rows: the random draws are then
    those of a single process holding the whole batch. (grain seeds `rng` by the batch
    number, the same on every process.)"""

    transform: grain.transforms.RandomMap
    shard_index: int
    shard_count: int

    def random_map(self, batch, rng: np.random.Generator):
        if self.shard_count == 1:
            return self.transform.random_map(batch, rng)
        size = len(batch["index"])
        rows = slice(self.shard_index * size, (self.shard_index + 1) * size)
        whole = {}
        for key, value in batch.items():
            whole[key] = np.zeros((size * self.shard_count,) + value.shape[1:], value.dtype)
            whole[key][rows] = value
        return {key: value[rows] for key, value in self.transform.random_map(whole, rng).items()}


def evaluation_batches(source, *, batch_size: int, shard_index: int = 0, shard_count: int = 1):
    """Yields padded batches with a boolean `mask`; together the processes see every
    example once, and each yields ceil(N / (shard_count * batch_size)) batches."""
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}); got {shard_index}")
    indices = np.arange(len(source))[shard_index::shard_count]
    num_batches = math.ceil(len(source) / (shard_count * batch_size))
    template = read_batch(source, np.zeros(1, np.int64))
    for b in range(num_batches):
        chosen = indices[b * batch_size : (b + 1) * batch_size]
        real = read_batch(source, chosen) if chosen.size else {k: v[:0] for k, v in template.items()}
        batch = {key: np.concatenate([value, np.zeros((batch_size - chosen.size,) + value.shape[1:], value.dtype)])
                 for key, value in real.items()}
        batch["mask"] = np.arange(batch_size) < chosen.size
        yield batch
