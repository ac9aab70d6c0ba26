"""Retrieval metrics against a brute-force count, ties counted against the model."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmrl_jax import evaluate


def _brute_force_rank(scores, i):
    rank = 1
    for j in range(scores.shape[1]):
        if j != i and scores[i, j] >= scores[i, i]:
            rank += 1
    return rank


@given(st.integers(2, 30), st.integers(0, 2**31 - 1), st.integers(2, 6))
def test_ranks_match_a_brute_force_count_with_ties(n, seed, levels):
    scores = np.random.default_rng(seed).integers(0, levels, size=(n, n)).astype(np.float32)  # many ties
    expected = np.array([_brute_force_rank(scores, i) for i in range(n)])
    np.testing.assert_array_equal(evaluate.ranks_of_diagonal(scores), expected)


def test_ties_never_flatter_the_model():
    constant = np.zeros((10, 10))
    assert np.all(evaluate.ranks_of_diagonal(constant) == 10)
    metrics = evaluate.retrieval_metrics(evaluate.ranks_of_diagonal(constant))
    assert metrics == {"R@1": 0.0, "R@5": 0.0, "R@10": 1.0, "MedR": 10.0, "MnR": 10.0}


def test_metrics_of_known_ranks():
    metrics = evaluate.retrieval_metrics(np.array([1, 2, 5, 6, 11, 100]))
    assert metrics["R@1"] == pytest.approx(1 / 6) and metrics["R@5"] == pytest.approx(3 / 6)
    assert metrics["R@10"] == pytest.approx(4 / 6)
    assert metrics["MedR"] == 5.5 and metrics["MnR"] == pytest.approx(125 / 6)


def test_any_to_any_covers_every_ordered_pair_and_perfect_embeddings_score_one():
    z = np.random.default_rng(0).normal(size=(50, 1, 8)).repeat(3, axis=1)  # three identical modalities
    table = evaluate.any_to_any_retrieval(z, ["a", "b", "c"])
    assert set(table) == {"a->b", "a->c", "b->a", "b->c", "c->a", "c->b", "mean"}
    assert all(row["R@1"] == 1.0 and row["MedR"] == 1.0 for row in table.values())
    flipped = z.copy()
    flipped[:, 1] *= -1  # b anti-aligned: the worst possible under cosine
    assert evaluate.any_to_any_retrieval(flipped, ["a", "b", "c"])["a->b"]["MedR"] == 50.0
    # the volume measure is sign-blind, as GRAM's geometry is
    assert evaluate.any_to_any_retrieval(flipped, ["a", "b", "c"], "volume")["a->b"]["R@1"] == 1.0


def test_retrieval_helpers_name_bad_input():
    """Three modalities named as two scored only the first two, silently; no ranks gave NaN."""
    z = np.zeros((5, 3, 4), np.float32)
    with pytest.raises(ValueError, match=r"k = len\(modalities\) = 2; got shape \(5, 3, 4\)"):
        evaluate.any_to_any_retrieval(z, ["a", "b"])
    with pytest.raises(ValueError, match="got shape \\(5, 4\\)"):
        evaluate.any_to_any_retrieval(z[:, 0], ["a", "b", "c"])
    with pytest.raises(ValueError, match="at least one query"):
        evaluate.retrieval_metrics(np.zeros((0,), np.int64))
    with pytest.raises(ValueError, match=r"positive is candidate i\); got shape \(4, 3\)"):
        evaluate.ranks_of_diagonal(np.ones((4, 3)))
    assert list(evaluate.ranks_of_diagonal(np.eye(3, 5))) == [1, 1, 1]
