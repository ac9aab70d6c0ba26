"""Eigen-decomposition of batches of small symmetric matrices in plain jax.numpy.

The losses only ever decompose k x k Gram matrices (k = number of modalities, a
handful). A cyclic Jacobi method written with jnp ops compiles to ordinary XLA code on
every backend: it vmaps, shards over the batch axis, and avoids LAPACK custom calls
(two `jnp.linalg.svd` calls in one program were seen to hang intermittently on this
machine's jaxlib CPU build; see ARCHITECTURE.md).

No derivative is defined through the iterations: callers wrap the result in a
`custom_jvp` with the closed-form first derivative they need (see `spectral.py`,
`geometry.py`), so the iteration count never shows up in the backward pass.
Differentiating `symmetric_eigh` itself (which is also what a second derivative of
those callers does) raises an error instead of silently returning zero.

Reference: Golub & Van Loan, Matrix Computations (4th ed.), section 8.5
(Algorithm 8.5.2 "sym.schur2" and the cyclic Jacobi method).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def default_sweeps(n: int) -> int:
    """Sweeps of cyclic Jacobi for an n x n matrix.

    A 2 x 2 matrix is diagonalised by one rotation. Convergence is quadratic once the
    off-diagonal mass is small: in float32, on 8,000 random, clustered, rank-one and
    unit-row Gram matrices each, the worst relative error reached ~1e-6 after 4 sweeps
    for n <= 4, 5 for n = 5 and 6 for n = 8; max(5, n) keeps a margin of one or more.
    """
    return 1 if n <= 2 else max(5, n)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def symmetric_eigh(matrix: jax.Array, sweeps: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (descending) and orthonormal eigenvectors of symmetric matrices.

    Args:
      matrix: `[..., n, n]` symmetric (only its symmetric part is used).
      sweeps: cyclic Jacobi sweeps; `default_sweeps(n)` if None.

    Returns:
      `(eigenvalues [..., n], eigenvectors [..., n, n])`, eigenvalues sorted from largest
      to smallest, eigenvector j in column j: `matrix @ V[..., :, j] = w[..., j] V[..., :, j]`.
      Not differentiable: use `gram_spectrum`, `singular_values`,
      `symmetric_determinant` or `symmetric_adjugate`, which carry exact first derivatives.
    """
    matrix = jnp.asarray(matrix)
    n = matrix.shape[-1]
    if matrix.ndim < 2 or matrix.shape[-2] != n:
        raise ValueError(f"symmetric_eigh needs square matrices [..., n, n]; got shape {matrix.shape}")
    sweeps = default_sweeps(n) if sweeps is None else sweeps
    return _cyclic_jacobi(matrix, sweeps)


@functools.partial(jax.jit, static_argnums=1)
def _cyclic_jacobi(matrix: jax.Array, sweeps: int) -> tuple[jax.Array, jax.Array]:
    # jit-compiled on its own so that eager calls reuse one compiled loop per shape.
    n = matrix.shape[-1]
    a = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
    eye = jnp.eye(n, dtype=a.dtype)
    v = jnp.broadcast_to(eye, a.shape)
    if n > 1:
        pairs = [(p, q) for p in range(n) for q in range(p + 1, n)]

        def one_sweep(_, carry):
            a, v = carry
            for p, q in pairs:
                a, v = _rotate(a, v, p, q, eye)
            return a, v

        a, v = jax.lax.fori_loop(0, sweeps, one_sweep, (a, v))
    eigenvalues = jnp.diagonal(a, axis1=-2, axis2=-1)
    order = jnp.argsort(-eigenvalues, axis=-1)
    eigenvalues = jnp.take_along_axis(eigenvalues, order, axis=-1)
    eigenvectors = jnp.take_along_axis(v, order[..., None, :], axis=-1)
    return eigenvalues, eigenvectors


@symmetric_eigh.defjvp
def _symmetric_eigh_jvp(sweeps, primals, tangents):
    raise NotImplementedError(
        "pmrl_jax.losses.symmetric_eigh has no derivative. First derivatives of the "
        "functions built on it (gram_spectrum, singular_values, leading_direction, "
        "symmetric_determinant, symmetric_adjugate and the losses) are exact; second "
        "derivatives (Hessians, grad of grad) are not implemented."
    )


def _rotate(a, v, p, q, eye):
    """One Jacobi rotation J in the (p, q) plane: a <- J^T a J zeroes a[p, q]; v <- v J."""
    app, aqq, apq = a[..., p, p], a[..., q, q], a[..., p, q]
    is_zero = apq == 0
    tau = (aqq - app) / (2.0 * jnp.where(is_zero, 1.0, apq))
    # The smaller root of t^2 + 2 tau t - 1 = 0: |rotation angle| <= pi/4. For huge |tau|
    # tau^2 overflows to inf and t correctly becomes 0.
    t = jnp.where(tau >= 0, 1.0, -1.0) / (jnp.abs(tau) + jnp.sqrt(1.0 + tau * tau))
    t = jnp.where(is_zero, 0.0, t)
    c = jax.lax.rsqrt(1.0 + t * t)
    s = t * c
    c, s = c[..., None, None], s[..., None, None]
    e_pp = eye[p, :, None] * eye[p, None, :]
    e_qq = eye[q, :, None] * eye[q, None, :]
    e_pq = eye[p, :, None] * eye[q, None, :]
    rotation = eye + (c - 1.0) * (e_pp + e_qq) + s * (e_pq - jnp.swapaxes(e_pq, -1, -2))
    a = jnp.einsum("...ji,...jk,...kl->...il", rotation, a, rotation)
    v = jnp.einsum("...ij,...jk->...ik", v, rotation)
    return a, v
