"""Ranks of the true match without an N x N score matrix: the one place where ranks are
counted on the devices (`rank_among` is the same rule on the host, for short lists).

Query i's true match is candidate i. Its rank is 1 + the number of other candidates
scoring at least as high (ties, and NaN scores, count against the model). The queries
are split over every device of the mesh; each device scores `tile` queries against
`tile` candidates at a time and keeps one counter per query, so it never holds more
than [tile, tile] scores (plus the replicated candidates). Every score comes from a
block of the same shape whatever the device count, so the ranks are the same on 1 or 8
devices, and equal the unblocked computation's given the same scores (tested with
exactly representable scores and many ties).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from pmrl_jax import losses as L
from pmrl_jax.sharding import BATCH_AXES

DEFAULT_TILE = 1024


def rank_among(own: np.ndarray, others: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """1 + the number of `others` [N, M] (where `valid`) scoring at least as high as
    `own` [N]: ties and NaN count against the model."""
    at_least_as_good = ~(others < np.asarray(own)[:, None])
    if valid is not None:
        at_least_as_good &= valid
    return 1 + at_least_as_good.sum(axis=1)


def _global_array(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    # Every process holds the whole (host) array; each device takes its slice.
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _padded(array: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([array, np.zeros((rows - len(array),) + array.shape[1:], array.dtype)])


@functools.lru_cache(maxsize=32)
def make_rank_function(similarity: str, mesh: jax.sharding.Mesh, num_candidates: int, tile: int):
    """A jitted (queries [M, q, d], candidates [M, c, d]) -> ranks [M], queries sharded
    over the mesh, candidates replicated; M a multiple of devices x tile.

    A device takes its queries `tile` rows at a time and walks the candidate tiles,
    starting with the tile that holds those rows' own candidates: the positives are the
    diagonal of that first [tile, tile] block, so they come from the same computation
    as every score they are compared with."""
    measure = L.get_similarity(similarity)

    def local_ranks(queries, candidates):
        chunks, tiles = queries.shape[0] // tile, candidates.shape[0] // tile
        device = jax.lax.axis_index(BATCH_AXES)

        def rank_chunk(chunk):
            rows = jax.lax.dynamic_slice_in_dim(queries, chunk * tile, tile)
            own_tile = device * chunks + chunk
            row_index = own_tile * tile + jnp.arange(tile)

            def count_tile(carry, step):
                counts, positive = carry
                tile_index = (own_tile + step) % tiles
                scores = measure(rows, jax.lax.dynamic_slice_in_dim(candidates, tile_index * tile, tile))
                positive = jnp.where(step == 0, jnp.diagonal(scores), positive)
                column = tile_index * tile + jnp.arange(tile)
                other = (column[None, :] < num_candidates) & (column[None, :] != row_index[:, None])
                at_least_as_good = ~(scores < positive[:, None])  # ties and NaN count against
                return (counts + jnp.sum(at_least_as_good & other, axis=1, dtype=jnp.int32), positive), None

            start = (jnp.zeros(tile, jnp.int32), jnp.zeros(tile, jnp.float32))
            (counts, _), _ = jax.lax.scan(count_tile, start, jnp.arange(tiles))
            return counts + 1

        return jax.lax.map(rank_chunk, jnp.arange(chunks)).reshape(-1)

    sharded = jax.shard_map(local_ranks, mesh=mesh, in_specs=(P(BATCH_AXES), P()), out_specs=P(BATCH_AXES),
                            check_vma=False)
    return jax.jit(sharded)


def diagonal_ranks(queries: np.ndarray, candidates: np.ndarray, similarity: str, mesh: jax.sharding.Mesh,
                   tile: int = DEFAULT_TILE) -> np.ndarray:
    """1-based rank of candidate i for query i, for queries `[N, q, d]` and candidates
    `[N, c, d]` (host arrays, the same on every process), scored with a measure of
    `pmrl_jax.losses` by name."""
    queries, candidates = np.asarray(queries, np.float32), np.asarray(candidates, np.float32)
    if queries.ndim != 3 or candidates.ndim != 3 or len(queries) != len(candidates):
        raise ValueError(f"queries and candidates must be [N, q, d] and [N, c, d] with the same N; got "
                         f"{queries.shape} and {candidates.shape}")
    n = len(queries)
    tile = max(1, min(tile, -(-n // mesh.size)))
    padded = -(-n // (mesh.size * tile)) * mesh.size * tile
    rank = make_rank_function(similarity, mesh, n, tile)
    with jax.set_mesh(mesh):
        ranks = rank(_global_array(_padded(queries, padded), NamedSharding(mesh, P(BATCH_AXES))),
                     _global_array(_padded(candidates, padded), NamedSharding(mesh, P())))
    return np.asarray(multihost_utils.process_allgather(ranks, tiled=True))[:n].astype(np.int64)


def top_candidates(queries: np.ndarray, candidates: np.ndarray, similarity: str, mesh: jax.sharding.Mesh,
                   k: int, tile: int = DEFAULT_TILE) -> np.ndarray:
    """Indices [N, k] of each query's k best-scoring candidates, best first (`top_k`)."""
    return top_k(queries, candidates, similarity, mesh, k, tile)[1]


def top_k(queries: np.ndarray, candidates: np.ndarray, similarity: str, mesh: jax.sharding.Mesh, k: int,
          tile: int = DEFAULT_TILE) -> tuple[np.ndarray, np.ndarray]:
    """(scores [M, k] float32, indices [M, k] int64) of each of the M queries' k
    best-scoring candidates of N, best first; ties go to the lower index, NaN scores
    last. Blockwise: the queries are split over the devices, and a device scores `tile`
    of its queries against `tile` candidates at a time, keeping [tile, k] best so far:
    it never holds more than [tile, tile + k] scores (plus the replicated candidates)."""
    queries, candidates = np.asarray(queries, np.float32), np.asarray(candidates, np.float32)
    n = len(candidates)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be in [1, {n}] (the number of candidates)")
    query_tile = max(1, min(tile, -(-len(queries) // mesh.size)))
    rows = -(-len(queries) // (mesh.size * query_tile)) * mesh.size * query_tile
    tile = max(1, min(tile, n))
    columns = -(-n // tile) * tile
    top = _make_top_function(similarity, mesh, n, k, tile, query_tile)
    with jax.set_mesh(mesh):
        scores, index = top(_global_array(_padded(queries, rows), NamedSharding(mesh, P(BATCH_AXES))),
                            _global_array(_padded(candidates, columns), NamedSharding(mesh, P())))
    gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))[:len(queries)]  # noqa: E731
    return gather(scores).astype(np.float32), gather(index).astype(np.int64)


@functools.lru_cache(maxsize=32)
def _make_top_function(similarity: str, mesh: jax.sharding.Mesh, n: int, k: int, tile: int, query_tile: int):
    measure = L.get_similarity(similarity)

    def top_of_chunk(queries, candidates):
        def merge(best, start):
            scores = measure(queries, jax.lax.dynamic_slice_in_dim(candidates, start, tile))
            column = start + jnp.arange(tile)
            scores = jnp.where((column[None, :] < n) & ~jnp.isnan(scores), scores, -jnp.inf)
            merged_scores = jnp.concatenate([best[0], scores], axis=1)
            merged_index = jnp.concatenate([best[1], jnp.broadcast_to(column, scores.shape)], axis=1)
            top, position = jax.lax.top_k(merged_scores, k)
            return (top, jnp.take_along_axis(merged_index, position, axis=1)), None

        start = (jnp.full((queries.shape[0], k), -jnp.inf), jnp.full((queries.shape[0], k), n, jnp.int32))
        (scores, index), _ = jax.lax.scan(merge, start, jnp.arange(0, candidates.shape[0], tile))
        return scores, index

    def local_top(queries, candidates):
        chunks = queries.reshape((queries.shape[0] // query_tile, query_tile) + queries.shape[1:])
        scores, index = jax.lax.map(lambda chunk: top_of_chunk(chunk, candidates), chunks)
        return scores.reshape(-1, k), index.reshape(-1, k)

    return jax.jit(jax.shard_map(local_top, mesh=mesh, in_specs=(P(BATCH_AXES), P()),
                                 out_specs=(P(BATCH_AXES), P(BATCH_AXES)), check_vma=False))
