"""What evaluators share: the model state, the splits, and each split's embeddings
computed once (`embed_split`)."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from pmrl_jax.data.pipeline import GaussianNoise, evaluation_batches
from pmrl_jax.evaluation import ranking


@dataclasses.dataclass
class Embedded:
    """A split's embeddings [N, k, d] (float32, numpy, row i = example i), optionally its
    encoder tokens {modality: [N, n, width]}, and its labels [N] when the data has them."""

    embeddings: np.ndarray
    tokens: dict[str, np.ndarray] | None = None
    labels: np.ndarray | None = None


def embed_split(trainer, state, source, *, batch_size: int, noise: float = 0.0, seed: int = 0,
                tokens: bool = False) -> Embedded:
    """Embeds every example of `source` exactly once (the padded rows of the last batch
    are dropped by the mask). `noise` > 0 adds N(0, (noise * std_f)^2) to every feature f
    of every float feature-vector input first (std_f: its std on the train split, from
    `trainer.statistics`), drawn from `seed`, the batch number and the process."""
    modalities = list(trainer.config.data.modalities)
    forward = trainer.forward_fn(tokens)
    process_batch = batch_size // jax.process_count()
    noisy = None
    if noise:
        statistics = trainer.statistics or {}
        noisy = GaussianNoise(level=noise, modalities=tuple(m for m in modalities if m in statistics),
                              scale={m: statistics[m][1] for m in modalities if m in statistics})
    chunks = []
    for number, batch in enumerate(evaluation_batches(source, batch_size=process_batch,
                                                      shard_index=jax.process_index(),
                                                      shard_count=jax.process_count())):
        if noisy:
            batch = noisy.random_map(batch, np.random.default_rng([seed, number, jax.process_index()]))
        with jax.set_mesh(trainer.mesh):
            z, token_dict = forward(state, trainer.global_batch(batch))
        local = {"z": z, **{f"tokens/{m}": t for m, t in token_dict.items()}}
        for key in ("mask", "index") + (("label",) if "label" in batch else ()):
            local[key] = jax.make_array_from_process_local_data(trainer.batch_sharding, batch[key])
        gathered = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in local.items()}
        mask = gathered.pop("mask")
        chunks.append({k: v[mask] for k, v in gathered.items()})
    merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.argsort(merged["index"], kind="stable")
    if not np.array_equal(merged["index"][order], np.arange(len(source))):
        raise RuntimeError(f"evaluation saw {len(merged['index'])} examples, not each of the {len(source)} exactly once")
    return Embedded(embeddings=merged["z"][order],
                    tokens={m: merged[f"tokens/{m}"][order] for m in modalities} if tokens else None,
                    labels=merged["label"][order] if "label" in merged else None)


@dataclasses.dataclass
class EvalContext:
    """The model state and what evaluators share: sources by split, and embeddings
    computed once per (split, noise level)."""

    config: ml_collections.ConfigDict
    trainer: object
    state: object
    sources: dict = dataclasses.field(default_factory=dict)
    _embedded: dict = dataclasses.field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.data.modalities)

    @property
    def split(self) -> str:
        return self.config.data.eval_split

    def source(self, split: str | None = None):
        split = split or self.split
        if split not in self.sources:
            from pmrl_jax.resolve import open_split

            self.sources[split] = open_split(self.config, split)
        return self.sources[split]

    def embedded(self, split: str | None = None, noise: float = 0.0, tokens: bool = False) -> Embedded:
        key = (split or self.split, noise)
        if key not in self._embedded or (tokens and self._embedded[key].tokens is None):
            self._embedded[key] = embed_split(self.trainer, self.state, self.source(key[0]),
                                              batch_size=self.config.data.eval_batch_size,
                                              noise=noise, seed=self.config.seed, tokens=tokens)
        return self._embedded[key]

    def ranks(self, queries: np.ndarray, candidates: np.ndarray, similarity: str) -> np.ndarray:
        return ranking.diagonal_ranks(queries, candidates, similarity, self.trainer.mesh, tile=self.config.eval.tile)
