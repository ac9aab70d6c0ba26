"""Datasets chosen by name."""

import numpy as np
import pytest

from pmrl_jax.data import registry


def test_uci_default_is_standardised_on_train_only():
    train = registry.make_source("uci_multiple_features", "train")
    test = registry.make_source("uci_multiple_features", "test", views=["pix", "mor"])
    assert len(train) == 1400 and len(test) == 400
    fou = np.stack([train[i]["fou"] for i in range(len(train))])
    np.testing.assert_allclose(fou.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(fou.std(0), 1, atol=1e-3)
    assert set(test[0]) == {"pix", "mor", "label"}
    test_mor = np.stack([test[i]["mor"] for i in range(len(test))])
    assert np.abs(test_mor.mean(0)).max() > 1e-3  # test is not re-centred on itself


def test_synthetic_splits_share_a_world_but_not_instances():
    train = registry.make_source("synthetic", "train", dims=[8, 4], sizes={"train": 64, "test": 32})
    test = registry.make_source("synthetic", "test", dims=[8, 4], sizes={"train": 64, "test": 32})
    assert len(train) == 64 and len(test) == 32 and train[0]["m0"].shape == (8,)
    assert not np.allclose(train[0]["m0"], test[0]["m0"])


def test_unknown_names_and_options_are_named():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; known: uci_multiple_features"):
        registry.make_source("mnist", "train")
    with pytest.raises(ValueError, match=r"dataset 'synthetic': bad options \['colour'\]"):
        registry.make_source("synthetic", "train", colour=3)
    with pytest.raises(ValueError, match="splits"):
        registry.make_source("uci_multiple_features", "dev")


def test_features_by_name(tmp_path):
    from pmrl_jax.data.features import write_split

    write_split(tmp_path, "train", {"x": np.ones((5, 3), np.float32), "y": np.zeros((5, 2), np.float32)})
    source = registry.make_source("features", "train", directory=str(tmp_path), modalities=["x", "y"])
    assert len(source) == 5 and source[0]["x"].shape == (3,)


def test_standardization_statistics_come_from_train(tmp_path):
    from pmrl_jax.data.features import write_split

    write_split(tmp_path, "train", {"x": np.array([[0.0], [2.0], [4.0]], np.float32)})
    write_split(tmp_path, "test", {"x": np.array([[100.0]], np.float32)})
    mean, std = registry.standardization_fitted_on_train("features", directory=str(tmp_path), modalities=["x"])
    np.testing.assert_allclose(mean["x"], [2.0])
    np.testing.assert_allclose(std["x"], [np.std([0.0, 2.0, 4.0])], rtol=1e-6)
