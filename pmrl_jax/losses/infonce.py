"""Pairwise InfoNCE baselines on the `[B, k, d]` interface (docs/math.md, "Baselines")."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from pmrl_jax.losses import common
from pmrl_jax.losses.explicit_axes import runs_in_auto_axes


@runs_in_auto_axes("rows")
def cosine_matrix(a: jax.Array, b: jax.Array) -> jax.Array:
    """S[i, j] = <a_i, b_j> / (|a_i| |b_j|): `[B1, d], [B2, d] -> [B1, B2]`.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> losses.cosine_matrix(jnp.array([[1.0, 0.0]]), jnp.array([[2.0, 0.0], [0.0, 3.0]])).tolist()
        [[1.0, 0.0]]
    """
    common.check_rank(a, "a", 2, "[batch, d]")
    common.check_rank(b, "b", 2, "[batch, d]")
    common.check_same_width(a, b, "`a` and `b`")
    return common.l2_normalize(a) @ common.l2_normalize(b).T


@runs_in_auto_axes("scalar")
def infonce_loss(
    a: jax.Array, b: jax.Array, *, temperature: float | jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """Symmetric InfoNCE (CLIP):

        logits = cos(a_i, b_j) / tau
        L = 1/2 * (CE_ls(logits, diag) + CE_ls(logits^T, diag))

    Source: Radford et al., "Learning Transferable Visual Models From Natural Language
    Supervision", ICML 2021 (van den Oord et al. 2018 for InfoNCE).

    Args:
      a, b: `[B, d]` paired embeddings (row i of each is the same instance).
      temperature: tau > 0 (a Python float or a learned scalar).
      label_smoothing: in [0, 1).

    Example:
        >>> import jax
        >>> from pmrl_jax import losses
        >>> a = jax.random.normal(jax.random.key(0), (8, 16))
        >>> matched = losses.infonce_loss(a, a, temperature=0.07)           # each row its own best match
        >>> shuffled = losses.infonce_loss(a, a[::-1], temperature=0.07)
        >>> bool(matched < 0.01 < shuffled)
        True
    """
    if jnp.shape(a)[:1] != jnp.shape(b)[:1]:
        raise ValueError(f"`a` and `b` must hold the same instances; got shapes {jnp.shape(a)} and {jnp.shape(b)}")
    common.check_batch(a, "a")
    common.check_temperature(temperature)
    common.check_label_smoothing(label_smoothing)
    return common.symmetric_cross_entropy(cosine_matrix(a, b) / temperature, label_smoothing)


@runs_in_auto_axes("scalar")
def anchored_infonce_loss(x: jax.Array, *, temperature: float | jax.Array, anchor: int = 0) -> jax.Array:
    """Anchored InfoNCE (ImageBind / LanguageBind): L = sum_{m != anchor} InfoNCE(x_anchor, x_m).

    Source: Girdhar et al., "ImageBind: One Embedding Space To Bind Them All", CVPR 2023;
    Zhu et al., "LanguageBind", ICLR 2024.

    Args:
      x: `[B, k, d]` embeddings, k >= 2.
      temperature: tau > 0.
      anchor: index of the anchor modality on axis 1.

    Example:
        >>> import jax
        >>> from pmrl_jax import losses
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> total = losses.anchored_infonce_loss(x, temperature=0.07, anchor=1)
        >>> pairs = losses.infonce_loss(x[:, 1], x[:, 0], temperature=0.07) + losses.infonce_loss(
        ...     x[:, 1], x[:, 2], temperature=0.07)
        >>> bool(abs(total - pairs) < 1e-4)
        True
    """
    common.check_modalities(x, "x", min_k=2)
    common.check_batch(x, "x")
    k = x.shape[1]
    if not 0 <= anchor < k:
        raise ValueError(f"`anchor` must index one of the k={k} modalities; got {anchor}")
    common.check_temperature(temperature)
    return sum(
        infonce_loss(x[:, anchor], x[:, m], temperature=temperature) for m in range(k) if m != anchor
    )


@runs_in_auto_axes("scalar")
def all_pairs_infonce_loss(x: jax.Array, *, temperature: float | jax.Array) -> jax.Array:
    """Mean of InfoNCE over all k (k - 1) / 2 unordered modality pairs.

    Args:
      x: `[B, k, d]` embeddings, k >= 2.
      temperature: tau > 0.

    Example:
        >>> import jax
        >>> from pmrl_jax import losses
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> pairs = [losses.infonce_loss(x[:, a], x[:, b], temperature=0.07) for a, b in ((0, 1), (0, 2), (1, 2))]
        >>> bool(abs(losses.all_pairs_infonce_loss(x, temperature=0.07) - sum(pairs) / 3) < 1e-4)
        True
    """
    common.check_modalities(x, "x", min_k=2)
    common.check_batch(x, "x")
    common.check_temperature(temperature)
    pairs = list(itertools.combinations(range(x.shape[1]), 2))
    return sum(infonce_loss(x[:, m], x[:, n], temperature=temperature) for m, n in pairs) / len(pairs)
