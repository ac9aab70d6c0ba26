"""The embedded UCI Multiple Features copy and its deterministic stratified split."""

import numpy as np
import pytest

from pmrl_jax.data import uci_multiple_features as uci


@pytest.fixture(scope="module")
def dataset():
    return uci.load()


def test_all_views_load_row_aligned(dataset):
    features, labels = dataset
    assert list(features) == list(uci.VIEWS)
    for name, x in features.items():
        assert x.shape == (2000, uci.VIEWS[name][2]) and x.dtype == np.float32
        assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 200))
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 200))  # class order, per README


def test_split_is_deterministic_disjoint_and_stratified(dataset):
    _, labels = dataset
    a, b = uci.stratified_split(labels, seed=0), uci.stratified_split(labels, seed=0)
    for split in a:
        np.testing.assert_array_equal(a[split], b[split])
    assert {k: len(v) for k, v in a.items()} == uci.DEFAULT_SPLIT_SIZES
    everything = np.concatenate(list(a.values()))
    assert len(np.unique(everything)) == len(everything) == 2000
    for split, indices in a.items():
        np.testing.assert_array_equal(np.bincount(labels[indices]), np.full(10, len(indices) // 10))
    other = uci.stratified_split(labels, seed=1)
    assert not np.array_equal(a["test"], other["test"])


def test_standardize_uses_train_statistics_only():
    rng = np.random.default_rng(0)
    train, test = rng.normal(3.0, 2.0, size=(500, 4)), rng.normal(-5.0, 1.0, size=(100, 4))
    train_z, test_z = uci.standardize(train, test)
    np.testing.assert_allclose(train_z.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(train_z.std(0), 1, atol=1e-5)
    np.testing.assert_allclose(test_z, (test - train.mean(0)) / train.std(0), rtol=1e-5)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown UCI Multiple Features view"):
        uci.load(["fou", "nope"])
    with pytest.raises(ValueError, match="multiple of the 10 classes"):
        uci.stratified_split(np.repeat(np.arange(10), 200), {"train": 1405})
