"""Top-k search over embeddings, by any registered measure, without an M x N matrix.

    from pmrl_jax.search import search
    scores, rows = search(queries, index, k=10)                 # [M, d] against [N, d]
    scores, rows = search(queries, index, k=10, measure="normalized_volume")
                                                                # [M, q, d] sets against [N, c, d]

Queries and index rows are single vectors `[n, d]` or sets of vectors `[n, q, d]` (a set
query, as the papers' retrieval: one modality against the set of the others). The
queries are split over the devices of `mesh`; each device scores `tile` queries against
`tile` index rows at a time and keeps its best k so far (`evaluation.ranking.top_k`).
Returns float32 scores and int64 row numbers, best first, like a FAISS index's
`search(queries, k)`.
"""

from __future__ import annotations

import jax
import numpy as np

from pmrl_jax import losses as L
from pmrl_jax.evaluation.ranking import DEFAULT_TILE, top_k


def _as_sets(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, None, :]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"`{name}` must be float vectors [n, d] or sets [n, rows, d]; got {array.dtype} "
                         f"{array.shape}")
    if len(array) and not np.isfinite(array).all():
        row = int(np.argmin(np.isfinite(array.reshape(len(array), -1)).all(axis=1)))
        raise ValueError(f"`{name}` row {row} holds NaN or inf")
    return array.astype(np.float32)


def search(queries, index, k: int = 10, measure: str = "cosine", mesh: jax.sharding.Mesh | None = None,
           tile: int = DEFAULT_TILE) -> tuple[np.ndarray, np.ndarray]:
    """(scores [M, k], rows [M, k]) of the k best rows of `index` for each query, by
    `measure` (a name of the `pmrl_jax.losses` registry: higher = more similar)."""
    from pmrl_jax.sharding import make_mesh

    queries, index = _as_sets(queries, "queries"), _as_sets(index, "index")
    if queries.shape[-1] != index.shape[-1]:
        raise ValueError(f"queries and index have different widths: {queries.shape[-1]} and {index.shape[-1]}")
    if measure not in L.similarity_names():
        raise ValueError(f"unknown measure {measure!r}; known: {', '.join(L.similarity_names())}")
    if not 1 <= k <= len(index):
        raise ValueError(f"k={k} must be in [1, {len(index)}] (the rows of the index)")
    return top_k(queries, index, measure, mesh or make_mesh(), k, tile)
