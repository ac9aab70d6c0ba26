"""Symile: contrastive learning with the multilinear inner product (docs/math.md, "Baselines")."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pmrl_jax.losses import common
from pmrl_jax.losses.explicit_axes import runs_in_auto_axes


@runs_in_auto_axes("rows")
def mip_matrix(queries: jax.Array, candidates: jax.Array) -> jax.Array:
    """MIP[i, j] = sum_d prod_{rows r of query i and candidate j} r[d], on unit rows.

    `queries [B1, q, d]`, `candidates [B2, c, d]` -> `[B1, B2]`. Since the product over
    all rows splits into (prod of query rows) . (prod of candidate rows) this is one
    matmul. With q = c = 1 it is the cosine similarity.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> queries = jnp.array([[[1.0, 0.0]]])                        # one row: the cosine
        >>> scores = losses.mip_matrix(queries, jnp.array([[[0.6, 0.8]], [[0.0, 1.0]]]))
        >>> [round(float(s), 4) for s in scores[0]]
        [0.6, 0.0]
    """
    common.check_sets(queries, candidates)
    query_product = jnp.prod(common.l2_normalize(queries), axis=1)
    candidate_product = jnp.prod(common.l2_normalize(candidates), axis=1)
    return query_product @ candidate_product.T


@runs_in_auto_axes("scalar")
def symile_loss(x: jax.Array, *, temperature: float | jax.Array) -> jax.Array:
    """Symile's loss: each modality in turn scored against candidates built from the others.

        logits_m[i, j] = MIP(x_im, {x_jn : n != m}) / tau = <x_im, prod_{n != m} x_jn> / tau
        L = mean_m CE(logits_m, diag)

    Rows are L2-normalised first. The candidates for query i are the other modalities of
    every instance j of the batch (Symile's O(N) negatives).

    Source: Saporta et al., "Contrasting with Symile: Simple Model-Agnostic Representation
    Learning for Unlimited Modalities", NeurIPS 2024.

    Args:
      x: `[B, k, d]` embeddings, k >= 2 (k = 2 is CLIP without the symmetrisation).
      temperature: tau > 0.

    Example:
        >>> import jax
        >>> from pmrl_jax import losses
        >>> x = jax.random.normal(jax.random.key(0), (8, 2, 16))    # with two modalities it is CLIP
        >>> clip = losses.infonce_loss(x[:, 0], x[:, 1], temperature=0.07)
        >>> bool(abs(losses.symile_loss(x, temperature=0.07) - clip) < 1e-4)
        True
    """
    common.check_modalities(x, "x", min_k=2)
    common.check_batch(x, "x")
    common.check_temperature(temperature)
    x = common.l2_normalize(x)
    k = x.shape[1]
    losses = []
    for m in range(k):
        rest = jnp.prod(jnp.concatenate([x[:, :m], x[:, m + 1 :]], axis=1), axis=1)  # [B, d]
        losses.append(common.smoothed_diagonal_cross_entropy(x[:, m] @ rest.T / temperature))
    return sum(losses) / k
