"""Singular values and the leading direction: docs/math.md, "PMRL" (the bounds on sigma_1 and the sign)."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

import naive
from pmrl_jax import losses as L


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


unit_rows = lambda k, d: hnp.arrays(np.float64, (k, d), elements=st.floats(-1, 1, width=32)).filter(  # noqa: E731
    lambda x: np.all(np.linalg.norm(x, axis=-1) > 0.1)
).map(unit)


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_singular_values_match_svd(k):
    x = np.random.default_rng(k).normal(size=(64, k, 20)).astype(np.float32)
    np.testing.assert_allclose(L.singular_values(x), np.linalg.svd(x, compute_uv=False), rtol=2e-5)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_leading_direction_matches_svd_up_to_the_fixed_sign(k):
    x = np.random.default_rng(k).normal(size=(64, k, 20)).astype(np.float32)
    u = np.asarray(L.leading_direction(x))
    np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(u, naive.leading_direction(x), atol=2e-5)
    assert np.all(np.einsum("bd,bkd->b", u, x) >= 0)


def test_leading_direction_of_aligned_rows_is_their_mean():
    rng = np.random.default_rng(0)
    direction = unit(rng.normal(size=(10, 16)))
    x = np.repeat(direction[:, None], 4, axis=1) + 1e-3 * rng.normal(size=(10, 4, 16))
    u = L.leading_direction(unit(x).astype(np.float32))
    np.testing.assert_allclose(u, unit(unit(x).mean(1)), atol=1e-5)
    flipped = -x  # same line, the sign follows the rows
    np.testing.assert_allclose(L.leading_direction(unit(flipped).astype(np.float32)), -np.asarray(u), atol=1e-5)


@given(st.sampled_from([2, 3, 4, 6]).flatmap(lambda k: unit_rows(k, 5)))
def test_theorem_2_bounds(rows):
    k = rows.shape[0]
    with jax.enable_x64(True):
        sigma = np.asarray(L.singular_values(rows))
    assert 1 - 1e-9 <= sigma[0] <= np.sqrt(k) + 1e-9
    np.testing.assert_allclose(np.sum(sigma**2), k, rtol=1e-9)  # trace G = k
    cosines = rows @ rows.T
    mean_off_diagonal = (cosines.sum() - k) / (k * (k - 1))
    assert sigma[0] ** 2 >= 1 + (k - 1) * mean_off_diagonal - 1e-9


@given(unit_rows(1, 6), hnp.arrays(np.float64, (4,), elements=st.sampled_from([-1.0, 1.0])))
def test_sigma1_is_sqrt_k_exactly_when_aligned_up_to_sign(line, signs):
    aligned = signs[:, None] * line
    with jax.enable_x64(True):
        sigma = np.asarray(L.singular_values(aligned))
        np.testing.assert_allclose(sigma[0], 2.0, rtol=1e-9)
        np.testing.assert_allclose(sigma[1:], 0.0, atol=1e-6)
        bent = aligned.copy()
        bent[1] = unit(bent[1] + 0.1 * np.roll(bent[1], 1))
        if abs(abs(bent[1] @ aligned[0]) - 1) > 1e-6:  # not on the line any more
            assert float(L.singular_values(bent)[0]) < 2.0 - 1e-9


@pytest.mark.parametrize("k", [2, 3, 4])
def test_gradients_match_full_svd_and_finite_differences(k):
    with jax.enable_x64(True):
        x = np.random.default_rng(k).normal(size=(6, k, 9))
        w = np.random.default_rng(1).normal(size=(6, k))
        wu = np.random.default_rng(2).normal(size=(6, 9))
        f = jax.jit(jax.grad(lambda x: jnp.sum(w * L.singular_values(x))))
        g = jax.jit(jax.grad(lambda x: jnp.sum(w * naive.singular_values(x))))
        np.testing.assert_allclose(f(x), g(x), rtol=1e-7, atol=1e-9)
        f = jax.jit(jax.grad(lambda x: jnp.sum(wu * L.leading_direction(x))))
        g = jax.jit(jax.grad(lambda x: jnp.sum(wu * naive.leading_direction(x))))
        np.testing.assert_allclose(f(x), g(x), rtol=1e-7, atol=1e-9)
        check_grads(jax.jit(L.singular_values), (x,), order=1, modes=["fwd", "rev"])
        check_grads(jax.jit(L.leading_direction), (x,), order=1, modes=["fwd", "rev"])


@pytest.mark.parametrize("k", [3, 4, 6])
def test_finite_gradients_with_repeated_singular_values(k):
    """At exact alignment sigma_2 = ... = sigma_k = 0 (repeated): autodiff of svd is NaN there."""
    line = unit(np.random.default_rng(0).normal(size=(3, 1, 16))).astype(np.float32)
    aligned = jnp.asarray(np.repeat(line, k, axis=1))
    for fn in (L.singular_values, L.leading_direction):
        grad = jax.grad(lambda x: jnp.sum(jnp.sin(fn(x))))(aligned)
        assert np.all(np.isfinite(grad)), fn.__name__
    repeated_leading = jnp.asarray(np.eye(k, 16, dtype=np.float32)[None])  # sigma all equal
    for fn in (L.singular_values, L.leading_direction):
        assert np.all(np.isfinite(jax.grad(lambda x: jnp.sum(jnp.sin(fn(x))))(repeated_leading)))


def test_second_derivatives_raise_instead_of_lying():
    with pytest.raises(NotImplementedError, match="second derivatives"):
        jax.hessian(lambda x: L.singular_values(x).sum())(jnp.ones((3, 4)) + jnp.eye(3, 4))
