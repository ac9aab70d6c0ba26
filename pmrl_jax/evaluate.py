"""Evaluation: embed a split, then any-to-any retrieval metrics (MATH.md section 5).

For every ordered pair of modalities (q, c), query i's true match is candidate i. Its
rank is 1 + the number of other candidates scoring strictly better + the number of other
candidates tied with it: ties never flatter the model. Recall@K is the fraction of
queries with rank <= K; MedR and MnR are the median and mean rank.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pmrl_jax import losses as L
from pmrl_jax.data.pipeline import evaluation_batches

RECALL_AT = (1, 5, 10)


def embed_split(trainer, state, source, *, batch_size: int) -> np.ndarray:
    """Embeddings [N, k, d] (float32, numpy) of every example of `source`, each exactly
    once: the padded rows of the last batch are dropped by the mask."""
    model_forward = jax.jit(lambda state, batch: trainer.model(state)(batch)[0],
                            in_shardings=(trainer.state_shardings, trainer.batch_sharding))
    process_batch = batch_size // jax.process_count()
    chunks = []
    for batch in evaluation_batches(source, batch_size=process_batch, shard_index=jax.process_index(),
                                    shard_count=jax.process_count()):
        with jax.set_mesh(trainer.mesh):
            z = model_forward(state, trainer.global_batch(batch))
        mask = jax.make_array_from_process_local_data(trainer.batch_sharding, batch["mask"])
        index = jax.make_array_from_process_local_data(trainer.batch_sharding, batch["index"])
        z, mask, index = (np.asarray(jax.experimental.multihost_utils.process_allgather(a, tiled=True))
                          for a in (z, mask, index))
        chunks.append((index[mask], z[mask]))
    indices = np.concatenate([c[0] for c in chunks])
    embeddings = np.concatenate([c[1] for c in chunks])
    order = np.argsort(indices, kind="stable")
    if not np.array_equal(indices[order], np.arange(len(source))):
        raise RuntimeError(f"evaluation saw {len(indices)} examples, not each of the {len(source)} exactly once")
    return embeddings[order]


def ranks_of_diagonal(scores: np.ndarray) -> np.ndarray:
    """1-based rank of candidate i for query i, ties counted against the model."""
    scores = np.asarray(scores, np.float64)
    positive = np.diagonal(scores)[:, None]
    at_least_as_good = (scores >= positive).sum(axis=1)  # includes the positive itself
    return at_least_as_good.astype(np.int64)


def retrieval_metrics(ranks: np.ndarray) -> dict[str, float]:
    metrics = {f"R@{k}": float(np.mean(ranks <= k)) for k in RECALL_AT}
    metrics["MedR"] = float(np.median(ranks))
    metrics["MnR"] = float(np.mean(ranks))
    return metrics


def any_to_any_retrieval(embeddings: np.ndarray, modalities: Sequence[str], similarity: str = "cosine"):
    """{"q->c": metrics} for every ordered pair, and "mean" over them."""
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
