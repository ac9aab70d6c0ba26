"""grain input pipelines over any random-access source whose examples are
`{modality: float32 [D_m], ..., "label": int32}` dicts (FeaturesSource, ArraySource).

Training: source -> this process's shard -> seeded shuffle (a new order every epoch)
-> repeat -> transforms -> iterator -> batch (drop remainder) -> prefetch. The iterator
state is grain's, so a resumed run continues on the exact next batch.

Evaluation: this process's shard in order, batched, the last batch padded with zeros and
a `mask` marking real examples, so every example is seen exactly once and every process
yields the same number of batches.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import grain
import numpy as np


class ArraySource:
    """In-memory random-access source over row-aligned arrays (e.g. the UCI views)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], labels: np.ndarray | None = None):
        self.arrays = {m: np.asarray(a, np.float32) for m, a in arrays.items()}
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
        example = {m: a[index] for m, a in self.arrays.items()}
        if self.labels is not None:
            example["label"] = self.labels[index]
        return example


# ---- transforms ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Standardize(grain.transforms.Map):
    """(x_m - mean_m) / std_m per modality, with statistics fitted elsewhere (on train)."""

    mean: Mapping[str, np.ndarray]
    std: Mapping[str, np.ndarray]

    def map(self, example):
        out = dict(example)
        for m in self.mean:
            out[m] = ((example[m] - self.mean[m]) / self.std[m]).astype(np.float32)
        return out


@dataclasses.dataclass(frozen=True)
class GaussianNoise(grain.transforms.RandomMap):
    """Adds N(0, level^2) to every feature of the chosen modalities (PMRL's noise study)."""

    modalities: Sequence[str]
    level: float

    def random_map(self, example, rng: np.random.Generator):
        out = dict(example)
        for m in self.modalities:
            out[m] = (example[m] + self.level * rng.standard_normal(example[m].shape)).astype(np.float32)
        return out


@dataclasses.dataclass(frozen=True)
class ModalityDropout(grain.transforms.RandomMap):
    """Zeroes each listed modality independently with the given probability."""

    modalities: Sequence[str]
    probability: float

    def random_map(self, example, rng: np.random.Generator):
        out = dict(example)
        for m in self.modalities:
            if rng.random() < self.probability:
                out[m] = np.zeros_like(example[m])
        return out


def swap_modalities(dataset: grain.MapDataset, modalities: Sequence[str], fraction: float, seed: int) -> grain.MapDataset:
    """A `fraction` of the instances get the listed modalities from another (random)
    instance: misaligned pairs, PMRL's second noise injection. Deterministic by seed and
    index; applied to a MapDataset, where other instances can be read."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"swap fraction must be in [0, 1]; got {fraction}")
    size = len(dataset)

    def read(index):
        example = dict(dataset[index])
        rng = np.random.default_rng([seed, index])
        if size > 1 and rng.random() < fraction:
            other = (index + 1 + int(rng.integers(size - 1))) % size  # never itself
            donor = dataset[other]
            for m in modalities:
                example[m] = donor[m]
        return example

    return grain.MapDataset.range(size).map(read)


# ---- pipelines -------------------------------------------------------------------------


def _shard(dataset: grain.MapDataset, shard_index: int, shard_count: int) -> grain.MapDataset:
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}); got {shard_index}")
    return dataset[shard_index::shard_count]


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
    """Endless batches of `batch_size` (this process's share of the global batch)."""
    dataset = _shard(grain.MapDataset.source(source), shard_index, shard_count)
    if len(dataset) < batch_size:
        raise ValueError(f"this process's shard holds {len(dataset)} examples, fewer than one batch of {batch_size}")
    dataset = dataset.shuffle(seed=seed).repeat()
    for transform in transforms:
        dataset = dataset.random_map(transform, seed=seed) if isinstance(transform, grain.transforms.RandomMap) else dataset.map(transform)
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=prefetch_threads, prefetch_buffer_size=4 * batch_size))
    return iterable.batch(batch_size, drop_remainder=True)


def evaluation_batches(source, *, batch_size: int, shard_index: int = 0, shard_count: int = 1):
    """Yields padded batches with a boolean `mask`; together the processes see every
    example once, and each yields ceil(N / (shard_count * batch_size)) batches."""
    total = len(source)
    dataset = _shard(grain.MapDataset.source(source), shard_index, shard_count)
    num_batches = math.ceil(total / (shard_count * batch_size))
    examples = iter(dataset)
    template = source[0]
    for _ in range(num_batches):
        rows = [example for _, example in zip(range(batch_size), examples)]
        batch = {
            key: np.stack([r[key] for r in rows] + [np.zeros_like(template[key])] * (batch_size - len(rows)))
            if rows else np.zeros((batch_size,) + np.shape(template[key]), np.asarray(template[key]).dtype)
            for key in template
        }
        batch["mask"] = np.arange(batch_size) < len(rows)
        yield batch
