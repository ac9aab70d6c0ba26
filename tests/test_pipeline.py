"""grain pipelines: sharding, determinism, exact resumption, evaluation padding, transforms."""

import numpy as np
import pytest

from pmrl_jax.data import pipeline as P


def source(n=40):
    rows = np.arange(n, dtype=np.float32)
    return P.ArraySource({"a": np.stack([rows, -rows], 1), "b": rows[:, None] * 10}, labels=np.arange(n) % 4)


def ids(batch):
    return batch["a"][:, 0].astype(int).tolist()


def take(iterator, n):
    return [ids(next(iterator)) for _ in range(n)]


def test_training_batches_are_seeded_and_reshuffled_each_epoch():
    first = take(iter(P.training_dataset(source(), batch_size=8, seed=3)), 10)
    again = take(iter(P.training_dataset(source(), batch_size=8, seed=3)), 10)
    other = take(iter(P.training_dataset(source(), batch_size=8, seed=4)), 10)
    assert first == again and first != other
    epoch_1, epoch_2 = sum(first[:5], []), sum(first[5:], [])
    assert sorted(epoch_1) == sorted(epoch_2) == list(range(40)) and epoch_1 != epoch_2


def test_two_processes_see_disjoint_halves():
    seen = [set(sum(take(iter(P.training_dataset(source(), batch_size=4, seed=0, shard_index=p, shard_count=2)), 5), []))
            for p in range(2)]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(40))


def test_the_global_batch_does_not_depend_on_the_number_of_processes():
    """Two processes' rows, stacked in process order, are the one process's batch: the
    same examples and the same noise and dropout draws (multi-host runs follow the
    single-host loss curve)."""
    transforms = [P.GaussianNoise(modalities=("a",), level=0.5, scale={"a": np.ones(2, np.float32)}),
                  P.ModalityDropout(modalities=("b",), probability=0.3)]

    def batches(shard_index, shard_count):
        dataset = P.training_dataset(source(), batch_size=8 // shard_count, seed=5, shard_index=shard_index,
                                     shard_count=shard_count, transforms=transforms)
        iterator = iter(dataset)
        return [next(iterator) for _ in range(7)]

    single, halves = batches(0, 1), [batches(p, 2) for p in range(2)]
    for one, first, second in zip(single, *halves, strict=True):
        for key in ("a", "b", "index"):
            np.testing.assert_array_equal(one[key], np.concatenate([first[key], second[key]]))
    # and the transforms did draw: noise on `a` (integer-valued before), dropped rows of `b`
    assert not np.array_equal(single[0]["a"], np.round(single[0]["a"]))
    assert sum(int((b["b"][:, 0] == 0).sum()) for b in single) > sum(int((b["index"] == 0).sum()) for b in single)


def test_iterator_resumes_on_the_exact_next_batch():
    iterator = iter(P.training_dataset(source(), batch_size=8, seed=1))
    take(iterator, 7)
    state = iterator.get_state()
    expected = take(iterator, 6)
    fresh = iter(P.training_dataset(source(), batch_size=8, seed=1))
    fresh.set_state(state)
    assert take(fresh, 6) == expected


@pytest.mark.parametrize("shard_count", [1, 2, 3])
def test_evaluation_sees_every_example_once_padded_and_masked(shard_count):
    seen, counts = [], []
    for p in range(shard_count):
        batches = list(P.evaluation_batches(source(37), batch_size=5, shard_index=p, shard_count=shard_count))
        counts.append(len(batches))
        for batch in batches:
            assert batch["a"].shape == (5, 2) and batch["mask"].shape == (5,)
            seen += [i for i, keep in zip(ids(batch), batch["mask"]) if keep]
            assert np.all(batch["a"][~batch["mask"]] == 0)
    assert sorted(seen) == list(range(37)) and len(set(counts)) == 1


def test_transforms():
    src = source()
    scale = {"b": np.full(1, 4.0, np.float32)}
    noisy = next(iter(P.training_dataset(src, batch_size=40, seed=0,
                                         transforms=[P.GaussianNoise(["b"], 0.5, scale)])))
    clean = next(iter(P.training_dataset(src, batch_size=40, seed=0)))
    np.testing.assert_array_equal(noisy["a"], clean["a"])
    assert 1.4 < np.std(noisy["b"] - clean["b"]) < 2.6  # level 0.5 of a feature whose std is 4

    dropped = next(iter(P.training_dataset(src, batch_size=40, seed=0, transforms=[P.ModalityDropout(["b"], 1.0)])))
    assert np.all(dropped["b"] == 0) and np.any(dropped["a"] != 0)


def test_feature_statistics_are_each_features_mean_and_std_over_the_split():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5000, 3)) * [1.0, 10.0, 0.0] + [0.0, 3.0, 7.0]).astype(np.float32)
    src = P.ArraySource({"x": x, "tokens": np.ones((5000, 4), np.int32)})
    stats = P.feature_statistics(src, ["x", "tokens"])
    assert set(stats) == {"x"}  # token ids are not standardised or noised
    np.testing.assert_allclose(stats["x"][0], x.mean(0), atol=1e-5)
    np.testing.assert_allclose(stats["x"][1], x.std(0), rtol=1e-5, atol=1e-6)
    # A subsample spread over the split when it is larger than max_rows.
    mean, std = P.feature_statistics(src, ["x"], max_rows=1000)["x"]
    np.testing.assert_allclose(std, x.std(0), rtol=0.1, atol=1e-6)


def test_label_and_index_travel_with_the_batch():
    batch = next(iter(P.training_dataset(source(), batch_size=8, seed=0)))
    np.testing.assert_array_equal(batch["label"], batch["index"] % 4)
    np.testing.assert_array_equal(batch["a"][:, 0], batch["index"])


def test_bad_shards_and_tiny_shards_are_rejected():
    with pytest.raises(ValueError, match="shard_index"):
        P.training_dataset(source(), batch_size=4, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="fewer than one global batch of 16"):
        P.training_dataset(source(8), batch_size=16, seed=0)
