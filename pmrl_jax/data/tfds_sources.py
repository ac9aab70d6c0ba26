"""TFDS without TensorFlow: the embedded dataset as an array_record TFDS builder, and a
random-access source over any array_record TFDS dataset (`tfds.data_source`).

Only `Tensor` features are used (they encode and decode without TensorFlow).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds

from pmrl_jax.data import uci_multiple_features as uci


class UciMultipleFeatures(tfds.core.GeneratorBasedBuilder):
    """UCI Multiple Features, six views of 2,000 handwritten digits (CC BY 4.0), built
    from the copy shipped in this package; split by `uci.stratified_split(seed=0)`.
    Each record: one float32 tensor per view, `label` and `id` (row in the original
    files). Values are raw (standardise with train statistics downstream)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Six views; train / validation / test = 1400 / 200 / 400."}

    def _info(self) -> tfds.core.DatasetInfo:
        features = {name: tfds.features.Tensor(shape=(width,), dtype=np.float32) for name, (_, _, width) in uci.VIEWS.items()}
        features["label"] = tfds.features.Tensor(shape=(), dtype=np.int64)
        features["id"] = tfds.features.Tensor(shape=(), dtype=np.int64)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(features),
            homepage="https://doi.org/10.24432/C5HC70",
            citation="R. P. W. Duin. Multiple Features. UCI Machine Learning Repository. DOI 10.24432/C5HC70.",
            license="CC BY 4.0",
        )

    def _split_generators(self, dl_manager):
        features, labels = uci.load()
        splits = uci.stratified_split(labels, seed=0)
        return {split: self._generate_examples(features, labels, indices) for split, indices in splits.items()}

    def _generate_examples(self, features, labels, indices):
        for index in indices:
            record = {name: values[index] for name, values in features.items()}
            record["label"] = int(labels[index])
            record["id"] = int(index)
            yield int(index), record


def prepare_uci(data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """Builds (once) the embedded dataset as array_record under `data_dir`."""
    builder = UciMultipleFeatures(data_dir=os.fspath(data_dir), file_format="array_record")
    builder.download_and_prepare()
    return builder


class TfdsSource:
    """Random access to one split of an array_record TFDS dataset.

    `feature_map` maps TFDS feature keys to modality names (`{"caption": "text", ...}`);
    `label_key` (optional) names the integer label feature.
    """

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | os.PathLike | None,
        feature_map: Mapping[str, str],
        label_key: str | None = None,
    ):
        try:
            self.source = tfds.data_source(name, split=split, data_dir=None if data_dir is None else os.fspath(data_dir))
        except Exception as error:  # TFDS raises several types for a missing dataset or split
            raise ValueError(f"TFDS dataset {name!r} split {split!r} in {data_dir}: cannot open ({error})") from None
        keys = set(self.source.dataset_info.features.keys())
        missing = [k for k in list(feature_map) + ([label_key] if label_key else []) if k not in keys]
        if missing:
            raise ValueError(f"TFDS dataset {name!r} has no feature(s) {missing}; it has {sorted(keys)}")
        self.feature_map = dict(feature_map)
        self.label_key = label_key

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self._convert([self.source[index]], single=True)

    def read_batch(self, indices) -> dict[str, np.ndarray]:
        """Rows `indices` with one batched array_record read (`__getitems__`)."""
        return self._convert(self.source.__getitems__([int(i) for i in indices]), single=False)

    def _convert(self, records, single: bool) -> dict[str, np.ndarray]:
        batch = {
            modality: np.stack([np.asarray(r[key], np.float32) for r in records])
            for key, modality in self.feature_map.items()
        }
        if self.label_key is not None:
            batch["label"] = np.asarray([r[self.label_key] for r in records], np.int32)
        return {k: v[0] for k, v in batch.items()} if single else batch
