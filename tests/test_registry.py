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
    with pytest.raises(ValueError, match=r"sets \['colour'\], which dataset 'synthetic' does not take; its options: "):
        registry.make_source("synthetic", "train", colour=3)
    with pytest.raises(ValueError, match="splits"):
        registry.make_source("uci_multiple_features", "dev")


def test_features_by_name(tmp_path):
    from pmrl_jax.data.features import write_split

    write_split(tmp_path, "train", {"x": np.ones((5, 3), np.float32), "y": np.zeros((5, 2), np.float32)})
    source = registry.make_source("features", "train", directory=str(tmp_path), modalities=["x", "y"])
    assert len(source) == 5 and source[0]["x"].shape == (3,)


def test_a_features_directory_offers_every_npy_of_its_train_split_but_the_labels(tmp_path):
    from pmrl_jax.data.features import write_split

    write_split(tmp_path, "train", {"gloss": np.ones((5, 3), np.float16), "lemmas": np.ones((5, 3))},
                labels=np.arange(5))
    assert registry.available_modalities("features", {"directory": str(tmp_path)}) == ("gloss", "lemmas")
    source = registry.make_source("features", "train", directory=str(tmp_path))  # float16 and float64 are read
    assert source[0]["gloss"].dtype == np.float32 and source[0]["lemmas"].dtype == np.float32
