"""Blocked, sharded scoring against brute force, and the evaluators' metrics (the
evaluators end to end: tests/test_train.py)."""

import jax
import numpy as np
import pytest

from configs_util import load_config
from pmrl_jax import evaluation, losses as L, sharding
from pmrl_jax.evaluation import metrics, ranking as scoring
from pmrl_jax.evaluation.classification import Classification
from pmrl_jax.evaluation.rerank import rerank_ranks
from pmrl_jax.evaluation.retrieval import any_to_any, parse_set_query, positive_cosines


def brute_force_ranks(scores):
    """Query i's rank of candidate i: 1 + #{j != i : s_ij >= s_ii} (ties against), by loops."""
    n = len(scores)
    return np.array([1 + sum(1 for j in range(n) if j != i and scores[i, j] >= scores[i, i]) for i in range(n)])


def signed_one_hot(rng, n, rows, d=4):
    """Unit rows +-e_m: every cosine, volume and product is exact in float32, and ties abound."""
    x = np.zeros((n, rows, d), np.float32)
    x[np.arange(n)[:, None], np.arange(rows)[None], rng.integers(0, d, (n, rows))] = rng.choice([-1.0, 1.0], (n, rows))
    return x


MESHES = {"1 device": lambda: sharding.make_mesh(devices=jax.devices()[:1]),
          "8 devices": lambda: sharding.make_mesh(data=4, fsdp=2)}


@pytest.mark.parametrize("mesh", MESHES, ids=list(MESHES))
@pytest.mark.parametrize("measure,q,c", [("cosine", 1, 1), ("volume", 1, 2), ("volume", 2, 1), ("mip", 1, 2)])
@pytest.mark.parametrize("tile", [3, 16, 1024])
def test_blocked_ranks_equal_brute_force_on_exact_scores_with_ties(measure, q, c, tile, mesh):
    rng = np.random.default_rng(0)
    n = 53  # divisible by neither the devices nor the tiles
    queries, candidates = signed_one_hot(rng, n, q), signed_one_hot(rng, n, c)
    full = np.asarray(L.get_similarity(measure)(queries, candidates))
    assert len(np.unique(full)) < 10  # a handful of exact values: many ties
    expected = brute_force_ranks(full)
    got = scoring.diagonal_ranks(queries, candidates, measure, MESHES[mesh](), tile=tile)
    np.testing.assert_array_equal(got, expected)


def test_blocked_ranks_do_not_depend_on_the_device_count_and_match_the_full_matrix():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((301, 3, 32)).astype(np.float32)
    one = scoring.diagonal_ranks(z[:, :1], z[:, 1:2], "cosine", MESHES["1 device"](), tile=32)
    eight = scoring.diagonal_ranks(z[:, :1], z[:, 1:2], "cosine", MESHES["8 devices"](), tile=32)
    np.testing.assert_array_equal(one, eight)
    np.testing.assert_array_equal(one, brute_force_ranks(np.asarray(L.get_similarity("cosine")(z[:, :1], z[:, 1:2]))))


def test_nan_scores_count_against_the_model():
    z = np.ones((4, 1, 2), np.float32)
    z[2] = np.nan
    ranks = scoring.diagonal_ranks(z, z, "cosine", MESHES["1 device"]())
    assert ranks[2] == 4  # its positive is NaN: every candidate counts as at least as good


def test_blocked_top_candidates_equal_a_full_sort():
    rng = np.random.default_rng(2)
    queries, candidates = rng.standard_normal((70, 1, 16)), rng.standard_normal((70, 2, 16))
    full = np.asarray(L.get_similarity("volume")(queries.astype(np.float32), candidates.astype(np.float32)))
    got = scoring.top_candidates(queries, candidates, "volume", MESHES["8 devices"](), 5, tile=16)
    np.testing.assert_array_equal(got, np.argsort(-full, axis=1, kind="stable")[:, :5])


def test_retrieval_metrics_against_brute_force():
    ranks = np.array([1, 1, 2, 5, 6, 10, 11, 400])
    result = metrics.retrieval_metrics(ranks)
    assert result == {"R@1": 2 / 8, "R@5": 4 / 8, "R@10": 6 / 8, "MedR": 5.5, "MnR": float(np.mean(ranks))}
    with pytest.raises(ValueError, match="at least one query"):
        metrics.retrieval_metrics(np.zeros((0,), np.int64))


def test_ties_never_flatter_the_model():
    constant = np.zeros((10, 1, 4), np.float32)
    ranks = scoring.diagonal_ranks(constant, constant, "cosine", MESHES["1 device"]())
    assert np.all(ranks == 10)
    assert metrics.retrieval_metrics(ranks) == {"R@1": 0.0, "R@5": 0.0, "R@10": 1.0, "MedR": 10.0, "MnR": 10.0}


def test_any_to_any_covers_every_ordered_pair_and_perfect_embeddings_score_one():
    mesh = MESHES["8 devices"]()
    rank = lambda q, c, s: scoring.diagonal_ranks(q, c, s, mesh, tile=16)  # noqa: E731
    z = np.random.default_rng(0).normal(size=(50, 1, 8)).repeat(3, axis=1).astype(np.float32)  # three identical
    table = any_to_any(rank, z, ["a", "b", "c"], "cosine")
    assert set(table) == {"a->b", "a->c", "b->a", "b->c", "c->a", "c->b", "mean"}
    assert all(row["R@1"] == 1.0 and row["MedR"] == 1.0 for row in table.values())
    flipped = z.copy()
    flipped[:, 1] *= -1  # b anti-aligned: the worst possible under cosine
    assert any_to_any(rank, flipped, ["a", "b", "c"], "cosine")["a->b"]["MedR"] == 50.0
    # the volume measure is sign-blind, as GRAM's geometry is
    assert any_to_any(rank, flipped, ["a", "b", "c"], "volume")["a->b"]["R@1"] == 1.0


def test_positive_cosines_see_antipodal_views_that_a_volume_does_not():
    """Views embedded on one line but pointing opposite ways have volume 0 (perfectly
    'aligned' for GRAM) and mean positive cosine -1."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8))
    z = np.stack([a, -3.0 * a, 2.0 * a + 1e-9 * rng.normal(size=(50, 8))], axis=1)
    cosines = positive_cosines(z, ["x", "y", "w"])
    assert list(cosines) == ["x-y", "x-w", "y-w"]
    np.testing.assert_allclose([cosines["x-y"], cosines["x-w"], cosines["y-w"]], [-1.0, 1.0, -1.0], atol=1e-6)
    np.testing.assert_allclose(L.volume_matrix(z[:, 0], z[:, 1:]).diagonal(), 0.0, atol=1e-3)


def test_rerank_ranks_within_the_shortlist_and_keeps_misses():
    plain = np.array([2, 7, 60])
    shortlist = np.array([[3, 0, 4], [1, 5, 6], [0, 1, 5]])  # query 2's match is not in its shortlist
    head = np.array([[0.1, 0.9, 0.9],   # query 0: tie with candidate 4 counts against: rank 2
                     [5.0, 1.0, 2.0],   # query 1: best: rank 1
                     [1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(rerank_ranks(plain, shortlist, head), [2, 1, 60])


def test_top_k_accuracy_counts_ties_against():
    scores = np.array([[0.9, 0.9, 0.1], [0.2, 0.8, 0.1], [0.3, 0.2, 0.1]])
    result = metrics.top_k_accuracy(scores, np.array([0, 1, 2]), classes=[0, 1, 2])
    assert result == {"top-1": 1 / 3, "top-5": 1.0}


@pytest.mark.parametrize("text", ["pix->pix", "pix->", "pix+audio->fac", "pix fac"])
def test_bad_set_queries_are_named(text):
    with pytest.raises(ValueError, match="config.eval.retrieval.set_queries entry"):
        parse_set_query(text, ["pix", "fac", "kar"])


def test_unknown_evaluator_and_rerank_without_head_are_rejected():
    config = load_config("clip")
    config.evals = ("retrieval", "recall")
    with pytest.raises(ValueError, match=r"config.evals names \['recall'\]"):
        evaluation.check_evals(config)
    config.evals = ("rerank",)
    with pytest.raises(ValueError, match="config.model.matching.enabled"):
        evaluation.check_evals(config)


def test_blocked_scoring_never_holds_the_full_score_matrix():
    """Compiled, not run: 20,000 queries on 8 devices, whose N x N float32 matrix is 1.6 GB."""
    mesh, n, tile = MESHES["8 devices"](), 20_000, 256
    padded = -(-n // (mesh.size * tile)) * mesh.size * tile
    shape = jax.ShapeDtypeStruct((padded, 1, 64), np.float32)
    compiled = scoring.make_rank_function("cosine", mesh, n, tile).lower(shape, shape).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < n * n * 4 / 1000


def test_classification_against_embedded_class_descriptions(tmp_path):
    """Descriptions = one real `pix` input per class; checked against the model applied
    directly (not through embed_split) and an argmax."""
    from pmrl_jax import train

    trainer, state = train.train(load_config("clip"), str(tmp_path / "run"))
    config = trainer.config
    context = evaluation.EvalContext(config, trainer, state)
    test = context.source("test")
    labels = test.labels
    first_of_class = np.array([np.flatnonzero(labels == c)[0] for c in range(10)])
    np.save(tmp_path / "descriptions.npy", test.arrays["pix"][first_of_class])
    config.eval.classification.descriptions = str(tmp_path / "descriptions.npy")
    config.eval.classification.description_modality = "pix"
    result = Classification().run(context)["by_description"]

    model = trainer.model(state)
    describe = {m: np.zeros((10,) + a.shape[1:], np.float32) for m, a in test.arrays.items()}
    describe["pix"] = test.arrays["pix"][first_of_class]
    prototypes = np.asarray(model(describe)[0])[:, config.data.modalities.index("pix")]
    embeddings = np.asarray(model(test.arrays)[0])
    for m, name in enumerate(config.data.modalities):
        expected = np.mean(np.argmax(embeddings[:, m] @ prototypes.T, axis=1) == labels)
        assert result[name]["top-1"] == pytest.approx(expected, abs=1.5 / len(labels)), name

    config.eval.classification.descriptions = str(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError, match="config.eval.classification.descriptions"):
        Classification().run(context)
    np.save(tmp_path / "short.npy", test.arrays["pix"][:3])
    config.eval.classification.descriptions = str(tmp_path / "short.npy")
    with pytest.raises(ValueError, match=r"holds \(3, 240\); expected one 'pix' input per class"):
        Classification().run(context)
