"""Datasets by name: `make_source(name, split, **options)` returns a random-access source
of `{modality: float32 [D_m], "label": int32}` examples for the grain pipelines.

    uci_multiple_features  the embedded default; options: views (default: all six), seed
    synthetic              options: sizes {split: n}, dims, seed, num_classes, latent_dim,
                           hidden_dim, noise, class_separation
    features               options: directory, modalities, dims (bring your own .npy)
    tfds                   options: tfds_name, data_dir, feature_map, label_key

Per-modality standardisation of the embedded dataset is fitted on its train split only.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from pmrl_jax.configs import ConfigError
from pmrl_jax.data import uci_multiple_features as uci
from pmrl_jax.data.pipeline import ArraySource, read_batch

DEFAULT_SYNTHETIC_SIZES = {"train": 4096, "validation": 512, "test": 1024}


def _uci(split: str, views: Sequence[str] | None = None, seed: int = 0) -> ArraySource:
    features, labels = uci.load(views)
    splits = uci.stratified_split(labels, seed=seed)
    if split not in splits:
        raise ValueError(f"uci_multiple_features has splits {list(splits)}; got {split!r}")
    arrays = {}
    for name, values in features.items():
        _, arrays[name] = uci.standardize(values[splits["train"]], values[splits[split]])
    return ArraySource(arrays, labels[splits[split]])


def _synthetic(split: str, dims: Sequence[int] = (64, 64, 64), sizes: Mapping[str, int] | None = None,
               seed: int = 0, num_classes: int = 10, latent_dim: int = 16, hidden_dim: int = 64,
               noise: float = 0.1, class_separation: float = 2.0) -> ArraySource:
    from pmrl_jax.data.synthetic import make_synthetic

    sizes = dict(DEFAULT_SYNTHETIC_SIZES if sizes is None else sizes)
    if split not in sizes:
        raise ValueError(f"synthetic data has splits {list(sizes)}; got {split!r}")
    # Same world (seed) for every split; different instances per split, stable across runs.
    instance_seed = zlib.crc32(split.encode())
    features, labels = make_synthetic(
        sizes[split], dims, seed=seed, instance_seed=instance_seed, num_classes=num_classes,
        latent_dim=latent_dim, hidden_dim=hidden_dim, noise=noise, class_separation=class_separation,
    )
    return ArraySource(features, labels)


def _features(split: str, directory: str, modalities: Sequence[str], dims: Mapping[str, int] | None = None,
              check_finite: bool = True):
    from pmrl_jax.data.features import FeaturesSource

    return FeaturesSource(directory, split, modalities, dims=dims, check_finite=check_finite)


def _tfds(split: str, tfds_name: str, feature_map: Mapping[str, str], data_dir: str | None = None,
          label_key: str | None = None):
    from pmrl_jax.data.tfds_sources import TfdsSource

    return TfdsSource(tfds_name, split, data_dir, feature_map, label_key=label_key)


_BUILDERS = {"uci_multiple_features": _uci, "synthetic": _synthetic, "features": _features, "tfds": _tfds}


def dataset_names() -> tuple[str, ...]:
    return tuple(_BUILDERS)


def make_source(name: str, split: str, **options):
    if name not in _BUILDERS:
        raise ConfigError(f"unknown dataset {name!r}; known: {', '.join(_BUILDERS)}")
    builder = _BUILDERS[name]
    try:  # check the options only, so that a TypeError from inside a builder is not disguised
        inspect.signature(builder).bind(split, **options)
    except TypeError as error:
        raise ConfigError(f"dataset {name!r}: bad options {sorted(options)} ({error})") from None
    return builder(split, **options)


def standardization_fitted_on_train(name: str, **options) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(mean, std) per modality of a source's train split, for the `Standardize` transform."""
    source = make_source(name, "train", **options)
    batch = read_batch(source, np.arange(len(source)))
    modalities = [k for k in batch if k not in ("label", "index")]
    mean = {m: batch[m].mean(0) for m in modalities}
    std = {m: np.where(batch[m].std(0) > 1e-8, batch[m].std(0), 1.0).astype(np.float32) for m in modalities}
    return mean, std
