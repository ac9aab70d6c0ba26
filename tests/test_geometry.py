"""Gram matrices, determinants, adjugates and volumes: docs/math.md, "Gram matrix, volume, singular values"."""


import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

import naive
from pmrl_jax import losses as L
from pmrl_jax.losses import geometry


def unit_rows(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


rows_strategy = lambda k, d: hnp.arrays(  # noqa: E731
    np.float64, (k, d), elements=st.floats(-3, 3, allow_nan=False, width=32)
).filter(lambda x: np.linalg.matrix_rank(x, tol=1e-2) == x.shape[0])


# ---- closed forms -------------------------------------------------------------------


def test_k1_is_the_norm():
    x = np.random.default_rng(0).normal(size=(10, 1, 7)).astype(np.float32)
    np.testing.assert_allclose(L.gram_volume(x), np.linalg.norm(x[:, 0], axis=-1), rtol=1e-6)


def test_k2_unit_is_sine_of_angle():
    angles = np.linspace(0.0, np.pi, 33)
    rows = np.stack([np.stack([np.ones_like(angles), np.zeros_like(angles)], -1),
                     np.stack([np.cos(angles), np.sin(angles)], -1)], 1)
    np.testing.assert_allclose(L.gram_volume(rows.astype(np.float32)), np.abs(np.sin(angles)), atol=2e-6)


def test_k3_unit_closed_form():
    rows = unit_rows(np.random.default_rng(1), 64, 3, 5)
    x = np.sum(rows[:, 0] * rows[:, 1], -1)
    y = np.sum(rows[:, 0] * rows[:, 2], -1)
    z = np.sum(rows[:, 1] * rows[:, 2], -1)
    expected = np.sqrt(1 - x**2 - y**2 - z**2 + 2 * x * y * z)
    np.testing.assert_allclose(L.gram_volume(rows.astype(np.float32)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])  # k >= 4: the eigen-decomposition path
def test_volume_is_product_of_singular_values(k):
    rows = np.random.default_rng(k).normal(size=(32, k, 12))
    expected = np.prod(np.linalg.svd(rows, compute_uv=False), axis=-1)
    np.testing.assert_allclose(L.gram_volume(rows.astype(np.float32)), expected, rtol=2e-5)


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_unit_rows_bounds_and_trace(k):
    rows = unit_rows(np.random.default_rng(k), 128, k, 9).astype(np.float32)
    vol = np.asarray(L.gram_volume(rows))
    assert np.all(vol >= 0) and np.all(vol <= 1 + 1e-6)
    np.testing.assert_allclose(np.trace(L.gram_matrix(rows), axis1=-2, axis2=-1), k, rtol=1e-6)
    orthonormal = np.linalg.qr(np.random.default_rng(0).normal(size=(9, k)))[0].T
    np.testing.assert_allclose(L.gram_volume(orthonormal.astype(np.float32)), 1.0, rtol=1e-5)


# ---- invariances (hypothesis) --------------------------------------------------------


@given(rows_strategy(3, 4), st.integers(0, 2**31 - 1))
def test_invariant_under_orthogonal_maps(rows, seed):
    q = naive.random_rotation(np.random.default_rng(seed), rows.shape[1])
    with jax.enable_x64(True):
        np.testing.assert_allclose(L.gram_volume(rows @ q.T), L.gram_volume(rows), rtol=1e-9, atol=1e-9)


@given(rows_strategy(4, 5), st.permutations(range(4)))
def test_invariant_under_permutations(rows, order):
    with jax.enable_x64(True):
        np.testing.assert_allclose(L.gram_volume(rows[list(order)]), L.gram_volume(rows), rtol=1e-9, atol=1e-9)


@given(rows_strategy(3, 3), st.floats(-5, 5).filter(lambda c: abs(c) > 1e-3), st.integers(0, 2))
def test_scales_by_abs_c(rows, c, which):
    scaled = rows.copy()
    scaled[which] *= c
    with jax.enable_x64(True):
        np.testing.assert_allclose(L.gram_volume(scaled), abs(c) * L.gram_volume(rows), rtol=1e-9, atol=1e-12)


@given(hnp.arrays(np.float64, (2, 6), elements=st.floats(-2, 2, width=32)), hnp.arrays(np.float64, (2,), elements=st.floats(-2, 2, width=32)))
def test_zero_for_dependent_rows(rows, coefficients):
    dependent = np.concatenate([rows, (coefficients @ rows)[None]], 0)
    with jax.enable_x64(True):
        scale = np.prod(np.linalg.norm(dependent, axis=-1)) + 1e-12
        assert float(L.gram_volume(dependent)) <= 1e-6 * max(scale, 1.0)


def test_more_rows_than_dimensions_have_zero_volume():
    assert float(L.gram_volume(jnp.ones((4, 3)))) == 0.0


# ---- determinants and adjugates ------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_determinant_and_adjugate_match_lapack(n):
    rows = np.random.default_rng(n).normal(size=(16, n, n + 2))
    m = (rows @ rows.transpose(0, 2, 1)).astype(np.float32)
    det = np.linalg.det(m.astype(np.float64))
    scale = np.abs(det) + 1.0
    np.testing.assert_allclose(L.symmetric_determinant(m) / scale, det / scale, atol=5e-5)
    adj = det[:, None, None] * np.linalg.inv(m.astype(np.float64))
    adj_scale = np.abs(adj).max(axis=(1, 2), keepdims=True) + 1.0
    np.testing.assert_allclose(L.symmetric_adjugate(m) / adj_scale, adj / adj_scale, atol=5e-5)


def test_eigen_adjugate_and_its_derivative_match_the_cofactor_form():
    """The n >= 4 path (eigh + custom_jvp) checked on n = 3, where cofactors are exact,
    including a singular matrix with a repeated zero eigenvalue."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(3, 5))
    singular = np.outer(rows[0], rows[0])[:3, :3]  # rank one: eigenvalues (s, 0, 0)
    with jax.enable_x64(True):
        for m in [rows @ rows.T, singular, np.eye(3)]:
            tangent = rng.normal(size=(3, 3))
            tangent = tangent + tangent.T
            primal, dot = jax.jvp(geometry._adjugate_by_eigh, (m,), (tangent,))
            expected, expected_dot = jax.jvp(geometry._adjugate_closed_form, (m,), (tangent,))
            np.testing.assert_allclose(primal, expected, atol=1e-10)
            np.testing.assert_allclose(dot, expected_dot, atol=1e-10)
            primal, dot = jax.jvp(geometry._det_by_eigh, (m,), (tangent,))
            expected, expected_dot = jax.jvp(L.symmetric_determinant, (m,), (tangent,))
            np.testing.assert_allclose(primal, expected, atol=1e-10)
            np.testing.assert_allclose(dot, expected_dot, atol=1e-10)


# ---- volume_matrix -------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 3, 4, 5])  # k = 5: the candidates' 4 x 4 Gram by eigen-decomposition
def test_volume_matrix_matches_stacked_determinants(k):
    rng = np.random.default_rng(k)
    anchor = rng.normal(size=(12, 16)).astype(np.float32)
    others = rng.normal(size=(10, k - 1, 16)).astype(np.float32)
    np.testing.assert_allclose(L.volume_matrix(anchor, others), naive.volume_matrix(anchor, others), atol=2e-6)
    with jax.enable_x64(True):
        a64, o64 = anchor.astype(np.float64), others.astype(np.float64)
        weights = rng.normal(size=(12, 10))
        grads = jax.jit(jax.grad(lambda a, o: jnp.sum(weights * L.volume_matrix(a, o)), argnums=(0, 1)))(a64, o64)
        expected = jax.jit(jax.grad(lambda a, o: jnp.sum(weights * naive.volume_matrix(a, o)), argnums=(0, 1)))(a64, o64)
        for g, e in zip(grads, expected):
            np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10)
        check_grads(jax.jit(L.volume_matrix), (a64[:3], o64[:4]), order=1, modes=["fwd", "rev"])


def test_volume_matrix_diagonal_is_gram_volume_of_normalised_rows():
    x = unit_rows(np.random.default_rng(3), 20, 4, 8).astype(np.float32)
    np.testing.assert_allclose(jnp.diagonal(L.volume_matrix(x[:, 0], x[:, 1:])), L.gram_volume(x), atol=2e-6)


def test_volume_matrix_rows_below_the_normalisation_floor():
    """Rows with |x|^2 < NORM_FLOOR are divided by sqrt(NORM_FLOOR), not made unit; the
    volumes are still those of the rows `l2_normalize` returns, for an anchor too (its own
    Gram entry is |u|^2 < 1, not 1): values, and gradients against autodiff of the naive
    volumes. A zero anchor row has volume 0 with every candidate."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(7)
        anchor, others = rng.normal(size=(6, 9)), rng.normal(size=(5, 2, 9))
        anchor[1] *= 5e-13 / np.linalg.norm(anchor[1])  # |u|^2 = 0.25
        others[3, 1] *= 3e-13 / np.linalg.norm(others[3, 1])
        weights = rng.normal(size=(6, 5))

        def reference(a, o):
            return naive.volume_matrix_of_rows(L.common.l2_normalize(a), L.common.l2_normalize(o))

        volumes = L.volume_matrix(anchor, others)
        np.testing.assert_allclose(volumes, reference(anchor, others), rtol=1e-12, atol=1e-14)
        # u_1 is half a unit vector, so each of its volumes is half that of the unit row
        unit = anchor.copy()
        unit[1] /= np.linalg.norm(unit[1])
        np.testing.assert_allclose(volumes[1], 0.5 * L.volume_matrix(unit, others)[1], rtol=1e-12)
        grads = jax.grad(lambda a, o: jnp.sum(weights * L.volume_matrix(a, o)), argnums=(0, 1))(anchor, others)
        expected = jax.grad(lambda a, o: jnp.sum(weights * reference(a, o)), argnums=(0, 1))(anchor, others)
        for g, e in zip(grads, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-8, atol=1e-10 * np.abs(e).max())
        assert np.all(np.abs(grads[0][1]) > 0)
        anchor[2] = 0.0
        assert np.all(L.volume_matrix(anchor, others)[2] == 0.0)


def test_volume_matrix_shape_errors():
    with pytest.raises(ValueError, match="anchor"):
        L.volume_matrix(jnp.zeros((4, 2, 8)), jnp.zeros((4, 2, 8)))
    with pytest.raises(ValueError, match="others"):
        L.volume_matrix(jnp.zeros((4, 8)), jnp.zeros((4, 8)))
    with pytest.raises(ValueError, match="width"):
        L.volume_matrix(jnp.zeros((4, 8)), jnp.zeros((4, 2, 7)))


def test_functions_of_rows_need_at_least_one_row():
    """k = 0 rows failed inside jnp.stack ('Need at least one array to stack')."""
    empty = jnp.zeros((4, 0, 8))
    with pytest.raises(ValueError, match=r"gram_volume needs rows \[..., k, d\] with k >= 1; got shape \(4, 0, 8\)"):
        L.gram_volume(empty)
    for fn in (L.singular_values, L.leading_direction):
        with pytest.raises(ValueError, match=r"with k >= 1; got shape \(4, 0, 8\)"):
            fn(empty)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
def test_gram_volume_gradient_matches_naive_and_finite_differences(k):
    with jax.enable_x64(True):
        x = np.random.default_rng(k).normal(size=(5, k, 10))
        np.testing.assert_allclose(
            jax.grad(lambda x: L.gram_volume(x).sum())(x), jax.grad(lambda x: naive.volume(x).sum())(x), rtol=1e-8
        )
        check_grads(jax.jit(L.gram_volume), (x,), order=1, modes=["fwd", "rev"])
