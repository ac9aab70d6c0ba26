"""Evaluation: embed a split, then any-to-any retrieval metrics (MATH.md section 5).

For every ordered pair of modalities (q, c), query i's true match is candidate i. Its
rank is 1 + the number of other candidates scoring strictly better + the number of other
candidates tied with it: ties never flatter the model. Recall@K is the fraction of
queries with rank <= K; MedR and MnR are the median and mean rank.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from pmrl_jax import losses as L
from pmrl_jax.data.pipeline import GaussianNoise, evaluation_batches

RECALL_AT = (1, 5, 10)


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
    are dropped by the mask). `noise` > 0 adds N(0, noise^2) to every input first, drawn
    from `seed`, the batch number and the process."""
    modalities = list(trainer.config.data.modalities)

    forward = trainer.forward_fn(tokens)
    process_batch = batch_size // jax.process_count()
    noisy = GaussianNoise(level=noise, modalities=tuple(modalities)) if noise else None
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


def ranks_of_diagonal(scores: np.ndarray) -> np.ndarray:
    """1-based rank of candidate i for query i, ties counted against the model."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[1] < scores.shape[0]:
        raise ValueError("`scores` must be [queries, candidates] with at least as many candidates as queries "
                         f"(query i's positive is candidate i); got shape {scores.shape}")
    positive = np.diagonal(scores)[:, None]
    at_least_as_good = (scores >= positive).sum(axis=1)  # includes the positive itself
    return at_least_as_good.astype(np.int64)


def retrieval_metrics(ranks: np.ndarray) -> dict[str, float]:
    if np.size(ranks) == 0:
        raise ValueError("retrieval_metrics needs the rank of at least one query; got none")
    metrics = {f"R@{k}": float(np.mean(ranks <= k)) for k in RECALL_AT}
    metrics["MedR"] = float(np.median(ranks))
    metrics["MnR"] = float(np.mean(ranks))
    return metrics


def any_to_any_retrieval(embeddings: np.ndarray, modalities: Sequence[str], similarity: str = "cosine"):
    """{"q->c": metrics} for every ordered pair, and "mean" over them."""
    if np.ndim(embeddings) != 3 or np.shape(embeddings)[1] != len(modalities):
        raise ValueError(f"`embeddings` must be [N, k, d] with k = len(modalities) = {len(modalities)}; "
                         f"got shape {np.shape(embeddings)}")
    measure = jax.jit(L.get_similarity(similarity))
    table = {}
    for q, c in itertools.permutations(range(len(modalities)), 2):
        scores = measure(jnp.asarray(embeddings[:, q:q + 1]), jnp.asarray(embeddings[:, c:c + 1]))
        table[f"{modalities[q]}->{modalities[c]}"] = retrieval_metrics(ranks_of_diagonal(np.asarray(scores)))
    table["mean"] = {key: float(np.mean([row[key] for row in table.values()])) for key in next(iter(table.values()))}
    return table


def format_table(table: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    columns = [f"R@{k}" for k in RECALL_AT] + ["MedR", "MnR"]
    width = max(len(name) for name in table)
    lines = [title] if title else []
    lines.append(f"{'pair':{width}s} " + " ".join(f"{c:>7s}" for c in columns))
    for name, row in table.items():
        lines.append(f"{name:{width}s} " + " ".join(
            f"{row[c]:7.3f}" if c.startswith("R@") else f"{row[c]:7.1f}" for c in columns))
    return "\n".join(lines)
