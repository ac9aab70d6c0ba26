"""The plain-jnp Jacobi eigensolver against LAPACK (numpy, float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmrl_jax.losses import symmetric_eigh


def _cases(rng, n, batch=256):
    random = rng.normal(size=(batch, n, n))
    yield "random", random + random.transpose(0, 2, 1)
    z = rng.normal(size=(batch, n, 1))
    yield "rank_one", z @ z.transpose(0, 2, 1)
    q, _ = np.linalg.qr(rng.normal(size=(batch, n, n)))
    w = np.ones((batch, n))
    w[:, 0] = 3.0
    yield "repeated_trailing", q @ (w[..., None] * q.transpose(0, 2, 1))
    rows = rng.normal(size=(batch, n, 64))
    rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
    yield "unit_row_gram", rows @ rows.transpose(0, 2, 1)
    yield "identity", np.broadcast_to(np.eye(n), (batch, n, n))
    yield "zero", np.zeros((batch, n, n))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_matches_lapack(n):
    rng = np.random.default_rng(n)
    for name, matrix in _cases(rng, n):
        matrix = matrix.astype(np.float32)
        w, v = jax.jit(symmetric_eigh)(jnp.asarray(matrix))
        w, v = np.asarray(w, np.float64), np.asarray(v, np.float64)
        reference = np.linalg.eigvalsh(matrix.astype(np.float64))[:, ::-1]
        scale = np.maximum(np.abs(reference).max(-1), 1.0)[:, None]
        np.testing.assert_allclose(w / scale, reference / scale, atol=5e-6, err_msg=name)
        assert np.all(np.diff(w, axis=-1) <= 1e-6 * scale), name  # descending
        np.testing.assert_allclose(v.transpose(0, 2, 1) @ v, np.broadcast_to(np.eye(n), v.shape), atol=5e-6, err_msg=name)
        residual = matrix @ v - v * w[:, None, :]
        np.testing.assert_allclose(residual / scale[..., None], 0.0, atol=5e-6, err_msg=name)


def test_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        symmetric_eigh(jnp.zeros((3, 4)))


def test_has_no_derivative_of_its_own():
    with pytest.raises(NotImplementedError, match="no derivative"):
        jax.grad(lambda m: symmetric_eigh(m)[0].sum())(jnp.eye(3))
