"""Eigen-decomposition of batches of small symmetric matrices in plain jax.numpy.

The losses only ever decompose k x k Gram matrices (k = number of modalities, a
handful). A cyclic Jacobi method written with jnp ops compiles to ordinary XLA code on
every backend: it vmaps, shards over the batch axis, and avoids LAPACK custom calls
(two `jnp.linalg.svd` calls in one program were seen to hang intermittently on this
machine's jaxlib CPU build; docs/architecture.md, "Numerics").

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

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> values, vectors = losses.symmetric_eigh(jnp.array([[2.0, 1.0], [1.0, 2.0]]))
        >>> values.round(5).tolist()          # descending
        [3.0, 1.0]
    """
    matrix = jnp.asarray(matrix)
    n = matrix.shape[-1]
    if matrix.ndim < 2 or matrix.shape[-2] != n:
        raise ValueError(f"symmetric_eigh needs square matrices [..., n, n]; got shape {matrix.shape}")
    sweeps = default_sweeps(n) if sweeps is None else sweeps
    return _cyclic_jacobi(matrix, sweeps)


@functools.partial(jax.jit, static_argnums=1)
def _cyclic_jacobi(matrix: jax.Array, sweeps: int) -> tuple[jax.Array, jax.Array]:
    """Cyclic Jacobi on matrices held entry by entry: a[i][j] and v[i][j] are `[...]`
    arrays, so every rotation is a handful of elementwise ops over the batch (batched
    k x k matmuls run as one tiny matmul per instance on CPU). jit-compiled on its own
    so that eager calls reuse one compiled loop per shape."""
    n = matrix.shape[-1]
    upper = tuple(0.5 * (matrix[..., i, j] + matrix[..., j, i]) for i in range(n) for j in range(i, n))
    # Built like the entries (not from the batch shape) so that they carry the batch's sharding:
    # under a mesh with Explicit axes the loop's carry must keep one type.
    ones, zeros = jnp.ones_like(upper[0]), jnp.zeros_like(upper[0])
    vectors = tuple(ones if i == j else zeros for i in range(n) for j in range(n))
    flat = {}
    position = 0
    for i in range(n):
        for j in range(i, n):
            flat[i, j] = flat[j, i] = position
            position += 1

    def one_sweep(_, carry):
        a, v = list(carry[0]), list(carry[1])
        for p in range(n):
            for q in range(p + 1, n):
                _rotate(a, v, p, q, n, flat)
        return tuple(a), tuple(v)

    if n > 1:
        upper, vectors = jax.lax.fori_loop(0, sweeps, one_sweep, (upper, vectors))
    eigenvalues = jnp.stack([upper[flat[i, i]] for i in range(n)], axis=-1)
    eigenvectors = jnp.stack([jnp.stack(vectors[i * n : (i + 1) * n], axis=-1) for i in range(n)], axis=-2)
    order = jnp.argsort(-eigenvalues, axis=-1)
    eigenvalues = jnp.take_along_axis(eigenvalues, order, axis=-1)
    eigenvectors = jnp.take_along_axis(eigenvectors, order[..., None, :], axis=-1)
    return eigenvalues, eigenvectors


def _rotate(a, v, p, q, n, flat):
    """One Jacobi rotation J in the (p, q) plane, in place on the entry lists:
    a <- J^T a J zeroes a[p, q]; v <- v J (J_pp = J_qq = c, J_pq = s, J_qp = -s)."""
    app, aqq, apq = a[flat[p, p]], a[flat[q, q]], a[flat[p, q]]
    is_zero = apq == 0
    tau = (aqq - app) / (2.0 * jnp.where(is_zero, 1.0, apq))
    # The smaller root of t^2 + 2 tau t - 1 = 0: |rotation angle| <= pi/4. For huge |tau|
    # tau^2 overflows to inf and t correctly becomes 0.
    t = jnp.where(tau >= 0, 1.0, -1.0) / (jnp.abs(tau) + jnp.sqrt(1.0 + tau * tau))
    t = jnp.where(is_zero, 0.0, t)
    c = jax.lax.rsqrt(1.0 + t * t)
    s = t * c
    a[flat[p, p]] = app - t * apq
    a[flat[q, q]] = aqq + t * apq
    a[flat[p, q]] = jnp.zeros_like(apq)
    for r in range(n):
        if r != p and r != q:
            arp, arq = a[flat[r, p]], a[flat[r, q]]
            a[flat[r, p]] = c * arp - s * arq
            a[flat[r, q]] = s * arp + c * arq
    for i in range(n):
        vip, viq = v[i * n + p], v[i * n + q]
        v[i * n + p] = c * vip - s * viq
        v[i * n + q] = s * vip + c * viq


@symmetric_eigh.defjvp
def _symmetric_eigh_jvp(sweeps, primals, tangents):
    raise NotImplementedError(
        "pmrl_jax.losses.symmetric_eigh has no derivative. First derivatives of the "
        "functions built on it (gram_spectrum, singular_values, leading_direction, "
        "symmetric_determinant, symmetric_adjugate and the losses) are exact; second "
        "derivatives (Hessians, grad of grad) are not implemented."
    )
