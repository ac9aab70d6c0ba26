"""Singular values and the leading direction of an instance's `[k, d]` embedding matrix.

Everything comes from one eigen-decomposition of the k x k Gram matrix G = Z Z^T:
sigma_i = sqrt(lambda_i(G)), and the leading left singular vector in R^d (PMRL's u_1)
is u = Z^T v_1 / sigma_1 for the top eigenvector v_1 of G. That costs one batched
O(B k^2 d) product plus O(B k^3) work, where the official PMRL code runs a full SVD and
builds a d x d matrix per instance.

Derivatives (docs/math.md, "PMRL") avoid the 1 / (lambda_i - lambda_j) terms that make
autodiff of eigh/svd NaN when trailing singular values coincide (two zeros at perfect
alignment for k >= 3):
  d lambda_i = v_i^T dG v_i
  d v_1      = sum_{j > 1} v_j (v_j^T dG v_1) / (lambda_1 - lambda_j)
The second is (lambda_1 I - G + v_1 v_1^T)^-1 (I - v_1 v_1^T) dG v_1 written in the
eigenbasis: only the leading gap appears, and it is floored so that an exactly repeated
leading eigenvalue (where u_1 itself is undefined) still gives a finite derivative.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pmrl_jax.losses import common
from pmrl_jax.losses.eigh import symmetric_eigh
from pmrl_jax.losses.geometry import gram_matrix

# Leading gaps lambda_1 - lambda_j below this fraction of lambda_1 are floored in the
# derivative of v_1 (its value is unaffected).
LEADING_GAP_FLOOR = 1e-6

# |sum(v_1)| at or below this (v_1 is a unit k-vector) counts as a tie in the sign rule.
SIGN_TIE_TOLERANCE = 1e-5


def _sign_fixed_eigh(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
    """symmetric_eigh with v_1 flipped so that sum(v_1) >= 0.

    Since Z u_1 = sigma_1 v_1, sum(v_1) >= 0 is PMRL's sign convention
    sum_m <u_1, z_m> >= 0 (docs/math.md, "PMRL"): u_1 points along the modalities, not
    against them, so repelling leading directions cannot pair instances anti-parallel.
    When the sum is zero up to rounding (e.g. k = 2 with an obtuse angle, where u_1 is
    along z_1 - z_2) the tie goes to the first modality: <u_1, z_1> >= 0.
    """
    eigenvalues, vectors = symmetric_eigh(gram)
    leading = vectors[..., :, 0]
    total = jnp.sum(leading, axis=-1)
    key = jnp.where(jnp.abs(total) > SIGN_TIE_TOLERANCE, total, leading[..., 0])
    sign = jnp.where(key >= 0, 1.0, -1.0).astype(vectors.dtype)
    vectors = vectors.at[..., :, 0].multiply(sign[..., None])
    return eigenvalues, vectors


@jax.custom_jvp
def gram_spectrum(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (descending, `[..., k]`) and the sign-fixed top eigenvector (`[..., k]`)
    of symmetric positive semi-definite `[..., k, k]` matrices, with the derivatives
    of the module docstring.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> import numpy as np
        >>> values, leading = losses.gram_spectrum(jnp.array([[1.0, 0.5], [0.5, 1.0]]))
        >>> np.asarray(values, float).round(5).tolist(), np.asarray(leading, float).round(4).tolist()
        ([1.5, 0.5], [0.7071, 0.7071])
    """
    eigenvalues, vectors = _sign_fixed_eigh(gram)
    return eigenvalues, vectors[..., :, 0]


@gram_spectrum.defjvp
def _gram_spectrum_jvp(primals, tangents):
    (gram,), (gram_dot,) = primals, tangents
    eigenvalues, vectors = _sign_fixed_eigh(gram)
    gram_dot_eig = jnp.einsum("...ai,...ab,...bj->...ij", vectors, gram_dot, vectors)
    eigenvalues_dot = jnp.diagonal(gram_dot_eig, axis1=-2, axis2=-1)

    leading = eigenvalues[..., :1]
    gap_floor = LEADING_GAP_FLOOR * jnp.abs(leading) + jnp.finfo(gram.dtype).tiny
    gaps = jnp.maximum(leading - eigenvalues, gap_floor)
    not_leading = jnp.arange(gram.shape[-1]) > 0
    coefficients = jnp.where(not_leading, gram_dot_eig[..., :, 0] / gaps, 0.0)
    leading_vector_dot = jnp.einsum("...aj,...j->...a", vectors, coefficients)
    return (eigenvalues, vectors[..., :, 0]), (eigenvalues_dot, leading_vector_dot)


def spectrum(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(singular values [..., k] descending, leading direction [..., d]) of raw rows,
    from a single eigen-decomposition.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> import numpy as np
        >>> sigma, u = losses.spectrum(jnp.array([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]))  # three aligned rows
        >>> round(float(sigma[0, 0]), 4), np.asarray(u, float).round(4).tolist()  # sqrt(3); u_1 along the rows
        (1.7321, [[1.0, 0.0]])
    """
    x = common.as_compute(x)
    if x.ndim < 2 or x.shape[-2] == 0:
        raise ValueError(f"expected rows [..., k, d] with k >= 1; got shape {x.shape}")
    eigenvalues, leading_vector = gram_spectrum(gram_matrix(x))
    trace = jax.lax.stop_gradient(jnp.sum(eigenvalues, axis=-1, keepdims=True))
    floor = common.SQRT_FLOOR * trace + jnp.finfo(x.dtype).tiny
    singular = common.safe_sqrt(eigenvalues, floor)
    direction = jnp.einsum("...k,...kd->...d", leading_vector, x) / jnp.maximum(
        singular[..., :1], jnp.finfo(x.dtype).tiny
    )
    return singular, direction


def singular_values(x: jax.Array) -> jax.Array:
    """Singular values of each `[k, d]` matrix of rows, descending: `[..., k, d] -> [..., k]`.

    Raw rows (no normalisation). Computed as sqrt of the Gram matrix's eigenvalues, so a
    singular value below ~1e-3.5 of the largest is resolved only to float32 rounding of
    sigma^2 (tiny values read as ~3e-4 sigma_1 or 0); the derivative sigma_i = v_i^T dZ u_i
    is taken without the 1 / (sigma_i - sigma_j) terms and is finite everywhere.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> losses.singular_values(jnp.array([[[1.0, 0.0], [0.0, 1.0]]])).round(4).tolist()  # orthogonal rows
        [[1.0, 1.0]]
    """
    return spectrum(x)[0]


def leading_direction(x: jax.Array) -> jax.Array:
    """The leading left singular vector u_1 of each `[k, d]` row matrix: `[..., k, d] -> [..., d]`.

    Unit norm, sign fixed so that sum_m <u_1, x_m> >= 0 (the official PMRL code takes
    torch.linalg.svd's arbitrary sign). For aligned unit rows u_1 is their normalised mean.

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> rows = jnp.array([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
        >>> u = losses.leading_direction(rows)
        >>> bool((rows[0] @ u[0]).sum() >= 0)   # the sign points along the modalities
        True
    """
    return spectrum(x)[1]
