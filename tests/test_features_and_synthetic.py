"""Bring-your-own features (memory-mapped .npy per modality) and the synthetic world."""

import numpy as np
import pytest

from pmrl_jax.data import features as F
from pmrl_jax.data.synthetic import make_synthetic


def test_synthetic_is_deterministic_and_shaped():
    a, la = make_synthetic(100, [8, 5, 3], num_classes=4, seed=3)
    b, lb = make_synthetic(100, [8, 5, 3], num_classes=4, seed=3)
    assert [x.shape for x in a.values()] == [(100, 8), (100, 5), (100, 3)]
    for m in a:
        np.testing.assert_array_equal(a[m], b[m])
        assert a[m].dtype == np.float32
    np.testing.assert_array_equal(la, lb)
    assert set(np.unique(la)) <= set(range(4))
    c, _ = make_synthetic(100, [8, 5, 3], num_classes=4, seed=3, instance_seed=4)
    assert not np.allclose(a["m0"], c["m0"])


def test_synthetic_modalities_share_their_latent():
    """Instance-level signal: a linear map fitted from m0 to m1 predicts m1 far better
    for the matching instance than for a shuffled one."""
    x, _ = make_synthetic(2000, [32, 32], noise=0.05, seed=0)
    w, *_ = np.linalg.lstsq(x["m0"][:1500], x["m1"][:1500], rcond=None)
    prediction = x["m0"][1500:] @ w
    matched = np.mean((prediction - x["m1"][1500:]) ** 2)
    shuffled = np.mean((prediction - np.roll(x["m1"][1500:], 1, axis=0)) ** 2)
    assert matched < 0.5 * shuffled


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="noise"):
        make_synthetic(10, [4], noise=-1.0)


@pytest.fixture
def features_dir(tmp_path):
    x, labels = make_synthetic(50, [6, 4], seed=0)
    F.write_split(tmp_path, "train", {"video": x["m0"], "audio": x["m1"]}, labels=labels)
    return tmp_path, x, labels


def test_features_source_reads_rows_lazily(features_dir):
    root, x, labels = features_dir
    source = F.FeaturesSource(root, "train", ["video", "audio"], dims={"video": 6, "audio": 4})
    assert len(source) == 50 and source.dims == {"video": 6, "audio": 4}
    assert isinstance(source.arrays["video"], np.memmap)
    example = source[7]
    np.testing.assert_array_equal(example["video"], x["m0"][7])
    np.testing.assert_array_equal(example["audio"], x["m1"][7])
    assert example["label"] == labels[7]
    assert not any(p.name.endswith(".partial") for p in (root / "train").iterdir())


def test_features_errors_name_file_modality_and_row(features_dir):
    root, x, labels = features_dir
    with pytest.raises(F.FeaturesError, match=r"split 'test': missing directory"):
        F.FeaturesSource(root, "test", ["video"])
    with pytest.raises(F.FeaturesError, match=r"modality 'text': missing file .*text\.npy"):
        F.FeaturesSource(root, "train", ["video", "text"])
    with pytest.raises(F.FeaturesError, match=r"modality 'audio'.*dimension 4, the config says 5"):
        F.FeaturesSource(root, "train", ["video", "audio"], dims={"audio": 5})
    bad = x["m1"].copy()
    bad[23, 2] = np.nan
    F.write_split(root, "train", {"audio": bad})
    with pytest.raises(F.FeaturesError, match=r"modality 'audio'.*audio\.npy has NaN or inf in row 23"):
        F.FeaturesSource(root, "train", ["video", "audio"])
    F.write_split(root, "train", {"audio": x["m1"][:40]})
    with pytest.raises(F.FeaturesError, match=r"modality 'audio'.*40 rows but 'video' has 50"):
        F.FeaturesSource(root, "train", ["video", "audio"])
    F.write_split(root, "train", {"audio": np.ones((50, 4), np.int64)})
    with pytest.raises(F.FeaturesError, match=r"modality 'audio'.*float \[N, D\]"):
        F.FeaturesSource(root, "train", ["audio"])
    (root / "train" / "broken.npy").write_bytes(b"not a numpy file")
    with pytest.raises(F.FeaturesError, match=r"modality 'broken': cannot read"):
        F.FeaturesSource(root, "train", ["broken"])
