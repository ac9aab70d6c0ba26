"""Similarity measures by name, on one signature, so that losses, evaluators and
re-rankers can switch measure from a config string.

Every measure maps `queries [B1, q, d]` and `candidates [B2, c, d]` (each instance a
set of rows: q, c >= 1 modalities) to scores `[B1, B2]` where HIGHER means more similar.
Rows are L2-normalised first. Measures that are distances (volume, area) are negated.

    cosine : cos(mean of query rows, mean of candidate rows); plain cosine for q = c = 1
    mean_cosine : the mean cosine over (query row, candidate row) pairs
    volume : -Vol(query rows, candidate rows)          (GRAM; any q + c >= 2)
    normalized_volume : -Vol(query and candidate rows) / (Vol(query rows) Vol(candidate rows)),
             in [-1, 0]: the raw volume also shrinks with the candidate's own volume,
             whatever the query; this ratio is the product of the sines of the principal
             angles between the two sets' spans (for one query row: its distance to the
             candidate's span)
    sigma1 : sigma_1 of the stacked rows               (PMRL's set score; any q + c >= 2)
    area   : -area of the triangle of the three rows   (TRIANGLE; q + c = 3)
    mip    : sum_d prod over all rows of r[d]          (Symile's multilinear inner product)

Example, one modality against sets of two (each query's best candidate on its row):

    >>> import numpy as np, jax.numpy as jnp
    >>> from pmrl_jax import losses
    >>> queries = jnp.array([[[1.0, 0.0, 0.0]], [[0.0, 0.6, 0.8]]])
    >>> candidates = jnp.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    >>> for name in ("cosine", "mean_cosine", "volume", "normalized_volume", "sigma1", "area"):
    ...     print(name, np.asarray(losses.get_similarity(name)(queries, candidates), float).round(3).tolist())
    cosine [[0.707, 0.0], [0.424, 0.99]]
    mean_cosine [[0.5, 0.0], [0.3, 0.7]]
    volume [[-0.0, -1.0], [-0.8, -0.0]]
    normalized_volume [[-0.0, -1.0], [-0.8, -0.0]]
    sigma1 [[1.414, 1.0], [1.265, 1.414]]
    area [[-0.0, -0.866], [-0.6, -0.2]]
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pmrl_jax.losses import common
from pmrl_jax.losses.explicit_axes import runs_in_auto_axes
from pmrl_jax.losses.geometry import symmetric_determinant, volume_matrix
from pmrl_jax.losses.spectral import gram_spectrum
from pmrl_jax.losses.symile import mip_matrix
from pmrl_jax.losses.triangle import triangle_area_matrix

Similarity = Callable[[jax.Array, jax.Array], jax.Array]


def _pairwise_gram(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    """Gram matrix of (query i rows, candidate j rows) for every pair: `[B1, B2, q+c, q+c]`.
    Memory O(B1 B2 (q + c)^2): meant for evaluation blocks."""
    queries, candidates = common.l2_normalize(queries), common.l2_normalize(candidates)
    b1, b2 = queries.shape[0], candidates.shape[0]
    query_gram = jnp.einsum("iad,ibd->iab", queries, queries)
    candidate_gram = jnp.einsum("jad,jbd->jab", candidates, candidates)
    cross = jnp.einsum("iad,jbd->ijab", queries, candidates)
    top = jnp.concatenate([jnp.broadcast_to(query_gram[:, None], (b1, b2) + query_gram.shape[1:]), cross], -1)
    bottom = jnp.concatenate(
        [jnp.swapaxes(cross, -1, -2), jnp.broadcast_to(candidate_gram[None], (b1, b2) + candidate_gram.shape[1:])], -1
    )
    return jnp.concatenate([top, bottom], -2)


@runs_in_auto_axes("rows")
def cosine_similarity(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    common.check_sets(queries, candidates)
    query_mean = jnp.mean(common.l2_normalize(queries), axis=1)
    candidate_mean = jnp.mean(common.l2_normalize(candidates), axis=1)
    return common.l2_normalize(query_mean) @ common.l2_normalize(candidate_mean).T


@runs_in_auto_axes("rows")
def volume_similarity(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    common.check_sets(queries, candidates)
    if queries.shape[1] == 1:
        return -volume_matrix(queries[:, 0], candidates)
    if candidates.shape[1] == 1:
        return -volume_matrix(candidates[:, 0], queries).T
    determinant = symmetric_determinant(_pairwise_gram(queries, candidates))
    return -common.safe_sqrt(determinant, jnp.asarray(common.SQRT_FLOOR, determinant.dtype))


@runs_in_auto_axes("rows")
def mean_cosine_similarity(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    # mean_ab <q_a, c_b> = <mean_a q_a, mean_b c_b>: one product.
    common.check_sets(queries, candidates)
    return jnp.mean(common.l2_normalize(queries), axis=1) @ jnp.mean(common.l2_normalize(candidates), axis=1).T


# Set volumes below this count as this in the denominator of `normalized_volume`.
VOLUME_RATIO_FLOOR = 1e-6


def _own_volume(rows: jax.Array) -> jax.Array:
    """Vol of each instance's unit rows `[B, n, d] -> [B]` (1 for a single row)."""
    rows = common.l2_normalize(rows)
    if rows.shape[1] == 1:
        return jnp.ones(rows.shape[:1], rows.dtype)
    determinant = symmetric_determinant(jnp.einsum("bmd,bnd->bmn", rows, rows))
    return common.safe_sqrt(determinant, jnp.asarray(common.SQRT_FLOOR, determinant.dtype))


@runs_in_auto_axes("rows")
def normalized_volume_similarity(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    common.check_sets(queries, candidates)
    joint = volume_similarity(queries, candidates)  # minus the volume of all rows
    own = jnp.maximum(_own_volume(queries), VOLUME_RATIO_FLOOR)[:, None] * \
        jnp.maximum(_own_volume(candidates), VOLUME_RATIO_FLOOR)[None, :]
    return jnp.maximum(joint / own, -1.0)


@runs_in_auto_axes("rows")
def sigma1_similarity(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    common.check_sets(queries, candidates)
    eigenvalues, _ = gram_spectrum(_pairwise_gram(queries, candidates))
    return jnp.sqrt(jnp.maximum(eigenvalues[..., 0], 0.0))


@runs_in_auto_axes("rows")
def area_similarity(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    common.check_sets(queries, candidates)
    q, c = queries.shape[1], candidates.shape[1]
    if (q, c) == (1, 2):
        return -triangle_area_matrix(queries[:, 0], candidates)
    if (q, c) == (2, 1):
        return -triangle_area_matrix(candidates[:, 0], queries).T
    raise ValueError(f"the 'area' measure needs three rows in all (q + c = 3); got q={q}, c={c}")


@runs_in_auto_axes("rows")
def mip_similarity(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    common.check_sets(queries, candidates)
    return mip_matrix(queries, candidates)


_SIMILARITIES: dict[str, Similarity] = {
    "cosine": cosine_similarity,
    "mean_cosine": mean_cosine_similarity,
    "volume": volume_similarity,
    "normalized_volume": normalized_volume_similarity,
    "sigma1": sigma1_similarity,
    "area": area_similarity,
    "mip": mip_similarity,
}


def similarity_names() -> tuple[str, ...]:
    """The registered measures' names, sorted.

    Example:
        >>> from pmrl_jax import losses
        >>> {"cosine", "volume", "normalized_volume", "sigma1"} <= set(losses.similarity_names())
        True
    """
    return tuple(sorted(_SIMILARITIES))


def get_similarity(name: str) -> Similarity:
    """The measure registered under `name`; a ValueError lists the known names.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> query = jnp.array([[[1.0, 0.0, 0.0]]])                              # one modality
        >>> candidates = jnp.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],         # two modalities each
        ...                         [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
        >>> import numpy as np
        >>> np.asarray(losses.get_similarity("normalized_volume")(query, candidates), float).round(4).tolist()
        [[-0.0, -1.0]]
        >>> np.asarray(losses.get_similarity("cosine")(query, candidates), float).round(4).tolist()  # the means
        [[0.7071, 0.0]]
    """
    try:
        return _SIMILARITIES[name]
    except KeyError:
        raise ValueError(f"unknown similarity measure {name!r}; known: {', '.join(similarity_names())}") from None


def register_similarity(name: str, fn: Similarity) -> Similarity:
    """Adds a measure (same signature, higher = more similar). Names cannot be reused.

    The measure is registered, and returned, wrapped as the built-in ones are
    (`runs_in_auto_axes("rows")`): on a mesh with Explicit axes its [B1, B2] products run
    with those axes made Auto and its scores keep the queries' batch sharding on their
    rows; elsewhere it is called as it is.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> def first_rows_dot(queries, candidates):         # higher = more similar
        ...     return queries[:, 0] @ candidates[:, 0].T
        >>> _ = losses.register_similarity("first_rows_dot_example", first_rows_dot)
        >>> losses.get_similarity("first_rows_dot_example")(jnp.ones((2, 1, 3)), jnp.ones((4, 2, 3))).shape
        (2, 4)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a similarity measure's name must be a non-empty string; got {name!r}")
    if not callable(fn):
        raise TypeError(f"similarity measure {name!r} must be callable (queries, candidates) -> scores; got {fn!r}")
    if name in _SIMILARITIES:
        raise ValueError(f"similarity measure {name!r} is already registered")
    if getattr(fn, "auto_axes_output", None) is None:
        fn = runs_in_auto_axes("rows")(fn)
    _SIMILARITIES[name] = fn
    return fn
