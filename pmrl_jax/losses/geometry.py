"""Gram matrices, determinants and volumes (docs/math.md, "Gram matrix, volume, singular values").

For rows v_1..v_k of V (`[k, d]`), G = V V^T and Vol = sqrt(det G) = prod_i sigma_i(V).

Determinants and adjugates of small symmetric matrices are written so that their
derivatives are polynomials of the entries, never divisions: closed forms for n <= 3,
and for larger n an eigen-decomposition with a `custom_jvp` whose tangent is
tr(adj(M) dM) (for det) or the divided-difference formula of the adjugate, whose
divided differences are themselves products of eigenvalues. Both stay exact and finite
when the matrix is singular or has repeated eigenvalues, which is exactly where the
losses drive it (all modalities aligned).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pmrl_jax.losses import common
from pmrl_jax.losses.explicit_axes import runs_in_auto_axes
from pmrl_jax.losses.eigh import symmetric_eigh


def gram_matrix(x: jax.Array) -> jax.Array:
    """G = x x^T over the last two axes: `[..., k, d] -> [..., k, k]` (rows as given).

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> losses.gram_matrix(jnp.array([[1.0, 0.0], [1.0, 1.0]])).tolist()
        [[1.0, 1.0], [1.0, 2.0]]
    """
    x = common.as_compute(x)
    if x.ndim < 2:
        raise ValueError(f"gram_matrix needs rows [..., k, d]; got shape {x.shape}")
    # A batched matmul, not a broadcast-multiply-sum: the latter materialises [..., k, k, d]
    # twice (forward and backward). HIGHEST keeps the entries in float32 on TPUs too: near
    # alignment the volume is a small difference of these entries.
    return jnp.einsum("...kd,...ld->...kl", x, x, precision=jax.lax.Precision.HIGHEST)


# ---------------------------------------------------------------------------------------
# Determinant and adjugate of small symmetric matrices.


def _products_leaving_out(eigenvalues: jax.Array, leave_out: int) -> jax.Array:
    """Products of all eigenvalues but 1 (`leave_out=1`, shape [..., n]: pi_l) or but 2
    (`leave_out=2`, shape [..., n, n]: P_lm for l != m, 0 on the diagonal). No division,
    so exact when eigenvalues are zero."""
    n = eigenvalues.shape[-1]
    eye = jnp.eye(n, dtype=bool)
    if leave_out == 1:
        kept = jnp.where(eye, 1.0, eigenvalues[..., None, :])  # [..., l, p]
        return jnp.prod(kept, axis=-1)
    drop = eye[:, None, :] | eye[None, :, :]  # [l, m, p]: p in {l, m}
    kept = jnp.where(drop, 1.0, eigenvalues[..., None, None, :])
    return jnp.where(eye, 0.0, jnp.prod(kept, axis=-1))


@jax.custom_jvp
def _det_by_eigh(m: jax.Array) -> jax.Array:
    eigenvalues, _ = symmetric_eigh(m)
    return jnp.prod(eigenvalues, axis=-1)


@_det_by_eigh.defjvp
def _det_by_eigh_jvp(primals, tangents):
    (m,), (m_dot,) = primals, tangents
    eigenvalues, vectors = symmetric_eigh(m)
    # d det = tr(adj(M) dM) with adj(M) = V diag(pi) V^T.
    m_dot_eig = jnp.einsum("...ai,...ab,...bi->...i", vectors, m_dot, vectors)
    pi = _products_leaving_out(eigenvalues, 1)
    return jnp.prod(eigenvalues, axis=-1), jnp.sum(pi * m_dot_eig, axis=-1)


@jax.custom_jvp
def _adjugate_by_eigh(m: jax.Array) -> jax.Array:
    eigenvalues, vectors = symmetric_eigh(m)
    pi = _products_leaving_out(eigenvalues, 1)
    return jnp.einsum("...ai,...i,...bi->...ab", vectors, pi, vectors)


@_adjugate_by_eigh.defjvp
def _adjugate_by_eigh_jvp(primals, tangents):
    """adj(M) = V diag(pi(lambda)) V^T is a spectral map with pi_l = prod_{p != l} lambda_p.

    In the eigenbasis (M' = V^T dM V) its derivative has diagonal
    sum_{n != l} P_ln M'_nn and off-diagonal (pi_l - pi_m) / (lambda_l - lambda_m) M'_lm
    = -P_lm M'_lm, with P_lm = prod_{p not in {l, m}} lambda_p: no division anywhere.
    """
    (m,), (m_dot,) = primals, tangents
    eigenvalues, vectors = symmetric_eigh(m)
    pi = _products_leaving_out(eigenvalues, 1)
    pair_products = _products_leaving_out(eigenvalues, 2)
    m_dot_eig = jnp.einsum("...ai,...ab,...bj->...ij", vectors, m_dot, vectors)
    diagonal = jnp.einsum("...ln,...n->...l", pair_products, jnp.diagonal(m_dot_eig, axis1=-2, axis2=-1))
    adj_dot_eig = -pair_products * m_dot_eig + diagonal[..., None] * jnp.eye(m.shape[-1], dtype=m.dtype)
    adjugate = jnp.einsum("...ai,...i,...bi->...ab", vectors, pi, vectors)
    adj_dot = jnp.einsum("...ai,...ij,...bj->...ab", vectors, adj_dot_eig, vectors)
    return adjugate, adj_dot


def symmetric_determinant(m: jax.Array) -> jax.Array:
    """det of symmetric `[..., n, n]` matrices; derivative exact and finite when singular.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> float(losses.symmetric_determinant(jnp.array([[2.0, 1.0], [1.0, 2.0]])))
        3.0
    """
    n = m.shape[-1]
    if n == 1:
        return m[..., 0, 0]
    if n == 2:
        return m[..., 0, 0] * m[..., 1, 1] - m[..., 0, 1] * m[..., 1, 0]
    if n == 3:
        # Closed form; for a unit-row Gram matrix with off-diagonals x, y, z this is
        # 1 - x^2 - y^2 - z^2 + 2xyz (docs/math.md).
        return jnp.sum(m[..., 0, :] * _adjugate_closed_form(m)[..., :, 0], axis=-1)
    return _det_by_eigh(m)


def symmetric_adjugate(m: jax.Array) -> jax.Array:
    """adj(M) = det(M) M^{-1} of symmetric `[..., n, n]` matrices, defined (and
    differentiable) when M is singular.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> losses.symmetric_adjugate(jnp.array([[2.0, 1.0], [1.0, 2.0]])).tolist()
        [[2.0, -1.0], [-1.0, 2.0]]
    """
    n = m.shape[-1]
    if n <= 3:
        return _adjugate_closed_form(m)
    return _adjugate_by_eigh(m)


def _adjugate_closed_form(m: jax.Array) -> jax.Array:
    n = m.shape[-1]
    if n == 1:
        return jnp.ones_like(m)
    if n == 2:
        a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
        return jnp.stack([jnp.stack([d, -b], -1), jnp.stack([-c, a], -1)], -2)
    if n == 3:
        # adj(M)[i, j] = cofactor C[j, i]; with cyclic indices the signs take care of themselves.
        def cofactor(i, j):
            i1, i2, j1, j2 = (i + 1) % 3, (i + 2) % 3, (j + 1) % 3, (j + 2) % 3
            return m[..., i1, j1] * m[..., i2, j2] - m[..., i1, j2] * m[..., i2, j1]

        rows = [jnp.stack([cofactor(j, i) for j in range(3)], -1) for i in range(3)]
        return jnp.stack(rows, -2)
    raise ValueError(f"closed-form adjugate only for n <= 3, got {n}")


# ---------------------------------------------------------------------------------------
# Volumes.


def gram_volume(x: jax.Array) -> jax.Array:
    """Vol(v_1..v_k) = sqrt(det(x x^T)) of the raw rows: `[..., k, d] -> [...]`, any k >= 1.

    Rows are not normalised (this is the geometric primitive): Vol scales by |c| when a
    row is scaled by c. Value exact (0 for dependent rows, up to rounding); derivative
    finite everywhere (see `common.safe_sqrt`; the floor is relative to the rows'
    norms, by Hadamard's inequality det G <= prod_i |v_i|^2).

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> round(float(losses.gram_volume(jnp.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0]]))), 4)  # sin of the angle
        0.8
    """
    x = common.as_compute(x)
    if x.ndim < 2 or x.shape[-2] == 0:
        raise ValueError(f"gram_volume needs rows [..., k, d] with k >= 1; got shape {x.shape}")
    k, d = x.shape[-2:]
    if k > d:
        # More rows than dimensions are always dependent.
        return jnp.zeros(x.shape[:-2], x.dtype)
    gram = gram_matrix(x)
    determinant = symmetric_determinant(gram)
    scale = jax.lax.stop_gradient(jnp.prod(jnp.diagonal(gram, axis1=-2, axis2=-1), axis=-1))
    floor = common.SQRT_FLOOR * scale + jnp.finfo(x.dtype).tiny
    return common.safe_sqrt(determinant, floor)


@runs_in_auto_axes("rows")
def volume_matrix(anchor: jax.Array, others: jax.Array) -> jax.Array:
    """GRAM's score: V[i, j] = Vol(a_i, m1_j, ..., m{k-1}_j) on L2-normalised rows.

    Args:
      anchor: `[B1, d]` anchor-modality embeddings (queries).
      others: `[B2, k-1, d]` the other modalities of each candidate.

    Returns:
      `[B1, B2]` volumes in [0, 1]; lower means better aligned.

    With G_ij = [[s_i, c^T], [c, M_j]] (c = the anchor's cosines to candidate j's rows,
    M_j = the candidate's own Gram matrix, s_i = |a_i|^2 of the normalised anchor: 1, or
    less for a row below `l2_normalize`'s floor), the Schur/adjugate identity
        det G_ij = s_i det M_j - c_ij^T adj(M_j) c_ij
    needs one matmul [B1, d] x [d, (k-1) B2] for all c, one small adjugate per
    candidate, and O(B1 B2 (k-1)^2) elementwise work. No [B1, B2, k, k] tensor and no
    per-pair determinant (the official code stacks both, memory O(B^2 k^2)); for k = 3
    this is the closed form 1 - x^2 - y^2 - z^2 + 2xyz.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> anchor = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        >>> others = jnp.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])   # one candidate: a plane
        >>> losses.volume_matrix(anchor, others).round(4).tolist()       # in its plane: 0; orthogonal: 1
        [[0.0], [1.0]]
    """
    return _volume_from_cosines(*volume_matrix_terms(anchor, others))


def volume_matrix_terms(anchor: jax.Array, others: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The four inputs of GRAM's volume matrix after L2 normalisation: cosines
    `[B1, k-1, B2]` (c_ij, modality-major), det M_j `[B2]`, adj M_j `[B2, k-1, k-1]` and
    the anchors' own Gram entries s_i = |a_i|^2 `[B1]`."""
    common.check_rank(anchor, "anchor", 2, "[batch, d]")
    common.check_others(others)
    common.check_same_width(anchor, others, "`anchor` and `others`")
    anchor, _, _, anchor_gram = common.unit_and_inverse_norm(common.as_compute(anchor))
    others = common.l2_normalize(others)
    n_others, width = others.shape[1], others.shape[2]
    # One matmul [B1, d] x [d, (k-1) B2]; modality-major so each cosines[:, m] is contiguous.
    by_modality = jnp.swapaxes(others, 0, 1).reshape(-1, width)
    cosines = (anchor @ by_modality.T).reshape(anchor.shape[0], n_others, others.shape[0])
    candidate_gram = gram_matrix(others)  # [B2, k-1, k-1]
    return cosines, symmetric_determinant(candidate_gram), symmetric_adjugate(candidate_gram), anchor_gram[:, 0]


def quadratic_form(cosines, adjugate):
    """c_ij^T adj(M_j) c_ij `[B1, B2]` from a sequence of n cosine arrays c_a `[B1, B2]` and
    the candidates' adjugates `[B2, n, n]`, unrolled over the n^2 entries: elementwise work
    that fuses into one pass over [B1, B2] (an einsum lowers to B2 tiny batched matmuls)."""
    n = len(cosines)
    return sum(adjugate[:, a, b] * cosines[a] * cosines[b] for a in range(n) for b in range(n))


def pair_determinant(cosines, candidate_det, adjugate, anchor_gram):
    """det G_ij = s_i det M_j - c_ij^T adj(M_j) c_ij `[B1, B2]` (det M_j times the Schur
    complement s_i - c^T M_j^-1 c, written with the adjugate so that it holds for singular
    M_j), with c_ij = (c_1[i, j], ..., c_n[i, j]) from the sequence `cosines` and
    s_i = |a_i|^2 `[B1]` (1 unless the anchor row is below the normalisation's floor)."""
    return anchor_gram[:, None] * candidate_det - quadratic_form(cosines, adjugate)


def _by_modality(cosines):
    return [cosines[:, a] for a in range(cosines.shape[1])]


@jax.custom_jvp
def _volume_from_cosines(cosines, candidate_det, adjugate, anchor_gram) -> jax.Array:
    """sqrt(s_i det M_j - c_ij^T adj(M_j) c_ij) `[B1, B2]`, with `safe_sqrt`'s derivative."""
    return jnp.sqrt(jnp.maximum(pair_determinant(_by_modality(cosines), candidate_det, adjugate, anchor_gram), 0.0))


def volume_linearization(primals, tangents):
    """(V, dV / d det, d det) of `_volume_from_cosines`, with d det written in whole-array
    ops so that its transpose (the backward pass) is one broadcast multiply per input
    instead of (k-1)^2 slice-and-pad updates:
        d det = s d detM + detM ds - sum_a w_a dc_a - sum_ab c_a c_b d adj_ab,
        w_a = sum_b (adj_ab + adj_ba) c_b."""
    cosines, candidate_det, adjugate, anchor_gram = primals
    cosines_dot, candidate_det_dot, adjugate_dot, anchor_gram_dot = tangents
    n = cosines.shape[1]
    determinant = pair_determinant(_by_modality(cosines), candidate_det, adjugate, anchor_gram)
    volume = jnp.sqrt(jnp.maximum(determinant, 0.0))
    slope = 0.5 * jax.lax.rsqrt(jnp.maximum(determinant, common.SQRT_FLOOR))
    symmetric = adjugate + jnp.swapaxes(adjugate, -1, -2)
    weights = jnp.stack([sum(symmetric[None, :, a, b] * cosines[:, b] for b in range(n)) for a in range(n)], axis=1)
    determinant_dot = (
        anchor_gram[:, None] * candidate_det_dot[None, :]
        + anchor_gram_dot[:, None] * candidate_det[None, :]
        - jnp.sum(weights * cosines_dot, axis=1)
        - quadratic_form(_by_modality(cosines), adjugate_dot)
    )
    return volume, slope, determinant_dot


@_volume_from_cosines.defjvp
def _volume_from_cosines_jvp(primals, tangents):
    volume, slope, determinant_dot = volume_linearization(primals, tangents)
    return volume, slope * determinant_dot
