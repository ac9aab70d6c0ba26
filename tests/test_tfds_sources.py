"""The embedded dataset as an array_record TFDS builder, read back with
`tfds.data_source` and without TensorFlow."""

import subprocess
import sys

import numpy as np
import pytest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from pmrl_jax.data import tfds_sources

    directory = tmp_path_factory.mktemp("tfds")
    tfds_sources.prepare_uci(directory)
    return directory


def test_uci_builder_round_trips_through_data_source(data_dir):
    from pmrl_jax.data import tfds_sources, uci_multiple_features as uci

    features, labels = uci.load()
    splits = uci.stratified_split(labels, seed=0)
    feature_map = {view: view for view in uci.VIEWS}
    for split, indices in splits.items():
        source = tfds_sources.TfdsSource("uci_multiple_features", split, data_dir, feature_map, label_key="label")
        assert len(source) == len(indices)
        ids = sorted(int(source.source[i]["id"]) for i in range(len(source)))
        assert ids == sorted(indices.tolist())
    source = tfds_sources.TfdsSource("uci_multiple_features", "test", data_dir, feature_map, label_key="label")
    record = source.source[5]
    example = source[5]
    for view in uci.VIEWS:
        np.testing.assert_array_equal(example[view], features[view][int(record["id"])])
    assert example["label"] == labels[int(record["id"])]
    batch = source.read_batch([5, 0, 7])
    for view in uci.VIEWS:
        np.testing.assert_array_equal(batch[view][0], example[view])
    assert batch["label"].shape == (3,)


def test_tfds_source_errors_name_what_is_missing(data_dir):
    from pmrl_jax.data import tfds_sources

    with pytest.raises(ValueError, match=r"no feature\(s\) \['caption'\]"):
        tfds_sources.TfdsSource("uci_multiple_features", "train", data_dir, {"caption": "text"})
    with pytest.raises(ValueError, match="'nope'.*cannot open"):
        tfds_sources.TfdsSource("uci_multiple_features", "nope", data_dir, {"fou": "fou"})


def test_reading_needs_no_tensorflow(data_dir):
    code = (
        "import sys\n"
        "from pmrl_jax.data import tfds_sources\n"
        f"s = tfds_sources.TfdsSource('uci_multiple_features', 'train', {str(data_dir)!r}, {{'pix': 'pix'}})\n"
        "s[0]\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
