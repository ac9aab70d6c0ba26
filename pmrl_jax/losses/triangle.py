"""TRIANGLE: the area spanned by three unit embeddings (docs/math.md, "Baselines"), k = 3."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pmrl_jax.losses import common
from pmrl_jax.losses.explicit_axes import runs_in_auto_axes


def _doubled_squared_area(anchor: jax.Array, others: jax.Array) -> jax.Array:
    """(|t-v|^2 |t-a|^2 - <t-v, t-a>^2) / 2 = 2 area^2 for every (anchor i, candidate j),
    from the cosines x = <t, v>, y = <t, a>, z = <v, a> of unit rows:
    |t-v|^2 = 2 - 2x, |t-a|^2 = 2 - 2y, <t-v, t-a> = 1 - x - y + z."""
    common.check_rank(anchor, "anchor", 2, "[batch, d]")
    common.check_modalities(others, "others", exact_k=2)
    common.check_same_width(anchor, others, "`anchor` and `others`")
    t = common.l2_normalize(anchor)
    others = common.l2_normalize(others)
    x = t @ others[:, 0].T
    y = t @ others[:, 1].T
    z = jnp.sum(others[:, 0] * others[:, 1], axis=-1)[None, :]
    return ((2.0 - 2.0 * x) * (2.0 - 2.0 * y) - (1.0 - x - y + z) ** 2) / 2.0


@runs_in_auto_axes("rows")
def triangle_area_matrix(anchor: jax.Array, others: jax.Array) -> jax.Array:
    """A[i, j] = area of the triangle with corners t_i, v_j, a_j (unit rows).

    `anchor [B1, d]`, `others [B2, 2, d]` -> `[B1, B2]`, in [0, 3 sqrt(3) / 4]. Lower
    means better aligned. area^2 = (|t-v|^2 |t-a|^2 - <t-v, t-a>^2) / 4.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> t = jnp.array([[1.0, 0.0, 0.0]])
        >>> others = jnp.array([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])   # three orthogonal corners
        >>> round(float(losses.triangle_area_matrix(t, others)[0, 0]), 4)   # an equilateral triangle of side sqrt(2)
        0.866
    """
    doubled = _doubled_squared_area(anchor, others)
    return common.safe_sqrt(doubled / 2.0, jnp.asarray(common.SQRT_FLOOR, doubled.dtype))


@runs_in_auto_axes("scalar")
def triangle_contrastive_loss(
    anchor: jax.Array,
    others: jax.Array,
    *,
    temperature: float | jax.Array,
    label_smoothing: float = 0.1,
) -> jax.Array:
    """TRIANGLE's symmetric area InfoNCE (k = 3), scored as its authors' code does:

        S[i, j] = (|t_i - v_j|^2 |t_i - a_j|^2 - <t_i - v_j, t_i - a_j>^2) / 2 = 2 area^2
        logits  = -S / tau
        L       = 1/2 * (CE_ls(logits, diag) + CE_ls(logits^T, diag))

    S ranks exactly like `triangle_area_matrix` (a monotone function of it) and is
    polynomial in the cosines, so its derivative is finite everywhere; using the
    authors' scale keeps their temperatures meaningful.

    Source: Cicchetti et al., "A TRIANGLE Enables Multimodal Alignment Beyond Cosine
    Similarity", NeurIPS 2025.

    Args:
      anchor: `[B, d]` anchor embeddings (t).
      others: `[B, 2, d]` the two other modalities (v, a) of each instance.
      temperature: tau > 0.
      label_smoothing: in [0, 1).

    Example:
        >>> import jax
        >>> from pmrl_jax import losses
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> aligned = x[:, :1].repeat(3, axis=1) + 0.01 * x
        >>> bool(losses.triangle_contrastive_loss(aligned[:, 0], aligned[:, 1:], temperature=0.07)
        ...      < losses.triangle_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07))
        True
    """
    if jnp.shape(anchor)[:1] != jnp.shape(others)[:1]:
        raise ValueError(
            f"`anchor` and `others` must hold the same instances; got shapes {jnp.shape(anchor)} and {jnp.shape(others)}"
        )
    common.check_batch(anchor, "anchor")
    common.check_temperature(temperature)
    common.check_label_smoothing(label_smoothing)
    logits = -_doubled_squared_area(anchor, others) / temperature
    return common.symmetric_cross_entropy(logits, label_smoothing)
