"""The similarity registry: names, orientation (higher = more similar), and agreement
with the primitives and with naive formulations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import naive
from pmrl_jax import losses as L


def batch(seed, b, k, d=10):
    return np.random.default_rng(seed).normal(size=(b, k, d)).astype(np.float32)


def test_registry_names_and_unknown_name():
    assert set(L.similarity_names()) >= {"cosine", "volume", "sigma1", "area", "mip"}
    with pytest.raises(ValueError, match=r"unknown similarity measure 'dot'.*cosine"):
        L.get_similarity("dot")
    with pytest.raises(ValueError, match="already registered"):
        L.register_similarity("cosine", L.get_similarity("cosine"))
    with pytest.raises(ValueError, match="non-empty string"):
        L.register_similarity("", L.get_similarity("cosine"))
    with pytest.raises(TypeError, match="'dot' must be callable"):
        L.register_similarity("dot", "not a function")
    assert "dot" not in L.similarity_names()


def test_single_row_measures():
    q, c = batch(0, 5, 1), batch(1, 7, 1)
    cos = np.asarray(L.cosine_matrix(q[:, 0], c[:, 0]))
    np.testing.assert_allclose(L.get_similarity("cosine")(q, c), cos, atol=1e-6)
    np.testing.assert_allclose(L.get_similarity("mip")(q, c), cos, atol=1e-6)
    # k = 2: Vol = sin(angle); sigma_1 = sqrt(1 + |cos|) (eigenvalues of [[1, c], [c, 1]]).
    np.testing.assert_allclose(L.get_similarity("volume")(q, c), -np.sqrt(1 - cos**2), atol=1e-3)
    np.testing.assert_allclose(L.get_similarity("sigma1")(q, c), np.sqrt(1 + np.abs(cos)), atol=1e-6)


@pytest.mark.parametrize("q,c", [(1, 2), (2, 1), (1, 3), (2, 2), (3, 2)])
def test_set_volume_and_sigma1_match_stacked_rows(q, c):
    queries, candidates = batch(q, 4, q), batch(c + 10, 6, c)
    rows = np.concatenate(
        [np.broadcast_to(queries[:, None], (4, 6, q, 10)), np.broadcast_to(candidates[None], (4, 6, c, 10))], 2
    )
    rows = naive.normalize(rows)
    np.testing.assert_allclose(L.get_similarity("volume")(queries, candidates), -naive.volume(rows), atol=2e-6)
    sigma = np.linalg.svd(np.asarray(rows), compute_uv=False)[..., 0]
    np.testing.assert_allclose(L.get_similarity("sigma1")(queries, candidates), sigma, rtol=1e-5)


def test_volume_measure_is_the_gram_score():
    x = batch(3, 8, 3)
    np.testing.assert_allclose(
        L.get_similarity("volume")(x[:, :1], x[:, 1:]), -L.volume_matrix(x[:, 0], x[:, 1:]), atol=1e-7
    )


def test_area_measure_is_the_triangle_area():
    x = batch(4, 6, 3)
    t, v, a = (naive.normalize(x[:, m]) for m in range(3))
    # Heron-free check: area = |(v - t) x (a - t)| / 2 through the Gram determinant of the edges.
    edges = np.stack([np.asarray(v)[None] - np.asarray(t)[:, None], np.asarray(a)[None] - np.asarray(t)[:, None]], 2)
    area = np.asarray(naive.volume(edges)) / 2
    np.testing.assert_allclose(L.get_similarity("area")(x[:, :1], x[:, 1:]), -area, atol=1e-3)
    np.testing.assert_allclose(L.get_similarity("area")(x[:, 1:], x[:, :1]), -area.T, atol=1e-3)
    np.testing.assert_allclose(L.triangle_area_matrix(x[:, 0], x[:, 1:]) ** 2 * 2,
                               naive.triangle_score(x[:, 0], x[:, 1:]), atol=2e-6)
    with pytest.raises(ValueError, match="q \\+ c = 3"):
        L.get_similarity("area")(x[:, :1], x[:, :1])


def test_mip_of_sets_is_the_multilinear_product():
    q, c = batch(5, 3, 2), batch(6, 4, 2)
    qn, cn = naive.normalize(q), naive.normalize(c)
    expected = np.einsum("id,jd->ij", qn[:, 0] * qn[:, 1], cn[:, 0] * cn[:, 1])
    np.testing.assert_allclose(L.get_similarity("mip")(q, c), expected, atol=1e-6)


def test_mean_cosine_is_the_mean_over_pairs_of_rows():
    q, c = batch(11, 4, 2), batch(12, 5, 3)
    qn, cn = np.asarray(naive.normalize(q)), np.asarray(naive.normalize(c))
    expected = np.einsum("iad,jbd->ijab", qn, cn).mean(axis=(2, 3))
    np.testing.assert_allclose(L.get_similarity("mean_cosine")(q, c), expected, atol=1e-6)


def test_normalized_volume_is_the_distance_to_the_candidates_span():
    """One query row against two candidate rows: Vol(a, m1, m2) / Vol(m1, m2) is the
    distance from the unit a to the plane of m1, m2 (1 orthogonal to it, 0 in it),
    whatever the candidate's own volume, which scales the raw volume."""
    e = np.eye(4, dtype=np.float32)
    plane = np.stack([e[0], np.cos(0.1) * e[0] + np.sin(0.1) * e[1]])[None]  # a thin plane: own volume sin 0.1
    queries = np.stack([e[2], e[0], (e[0] + e[2]) / np.sqrt(2)])[:, None]
    ratio = np.asarray(L.get_similarity("normalized_volume")(queries, plane))[:, 0]
    np.testing.assert_allclose(ratio, [-1.0, 0.0, -1 / np.sqrt(2)], atol=2e-5)
    raw = np.asarray(L.get_similarity("volume")(queries, plane))[:, 0]
    np.testing.assert_allclose(raw, ratio * np.sin(0.1), atol=2e-5)
    # Hadamard-Fischer: the ratio lies in [-1, 0] for any sets.
    scores = np.asarray(L.get_similarity("normalized_volume")(batch(13, 6, 2), batch(14, 7, 2)))
    assert np.all(scores <= 0) and np.all(scores >= -1)
    np.testing.assert_allclose(L.get_similarity("normalized_volume")(queries, plane),
                               L.get_similarity("normalized_volume")(plane, queries).T, atol=1e-6)


@pytest.mark.parametrize("name", ["cosine", "mean_cosine", "volume", "normalized_volume", "sigma1", "area"])
def test_true_pairs_score_highest_when_modalities_coincide(name):
    """Orientation: for instances whose modalities are (nearly) one vector, the matching
    candidate must outscore the others under every geometric measure. (MIP is left out:
    sum_d x[d]^3 of one repeated unit vector is not maximal, it is a learned score.)"""
    rng = np.random.default_rng(7)
    base = rng.normal(size=(12, 1, 64))
    x = (np.repeat(base, 3, axis=1) + 0.01 * rng.normal(size=(12, 3, 64))).astype(np.float32)
    scores = np.asarray(L.get_similarity(name)(x[:, :1], x[:, 1:]))
    assert np.all(np.argmax(scores, axis=1) == np.arange(12)), name


@pytest.mark.parametrize("name", ["cosine", "mean_cosine", "volume", "normalized_volume", "sigma1", "area", "mip"])
def test_measures_jit_and_differentiate(name):
    x = batch(8, 6, 3)
    fn = L.get_similarity(name)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(fn(x[:, :1], x[:, 1:]))))(x)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", ["cosine", "mean_cosine", "volume", "normalized_volume", "sigma1", "area", "mip"])
def test_an_empty_set_of_rows_is_an_error(name):
    """A set query of no modality gave NaN (cosine) or scored the other side alone."""
    x = np.random.default_rng(0).normal(size=(4, 3, 8)).astype(np.float32)
    measure = L.get_similarity(name)
    with pytest.raises(ValueError, match=r"`queries` holds empty sets \(shape \(4, 0, 8\)\)"):
        measure(x[:, :0], x[:, 1:])
    with pytest.raises(ValueError, match=r"`candidates` holds empty sets"):
        measure(x[:, 1:], x[:, :0])
