"""The embedded default dataset: UCI "Multiple Features" (handwritten digits, six views).

2,000 digits ('0'..'9', 200 each), each described by six row-aligned feature sets
computed from the same scanned image. Shipped inside the package (about 1.8 MB of
gzipped CSV), so nothing is downloaded.

Source: UCI Machine Learning Repository, "Multiple Features" (R. P. W. Duin),
DOI 10.24432/C5HC70, licensed CC BY 4.0. See uci_multiple_features/README.md.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

# view name -> (file, what it holds, number of features). The order is the default
# `config.data.modalities`: `pix` first, so it is the default anchor.
VIEWS: dict[str, tuple[str, str, int]] = {
    "pix": ("mfeat-pix.csv.gz", "pixel averages in 2 x 3 windows", 240),
    "fac": ("mfeat-fac.csv.gz", "profile correlations", 216),
    "kar": ("mfeat-kar.csv.gz", "Karhunen-Loeve coefficients", 64),
    "fou": ("mfeat-fou.csv.gz", "Fourier coefficients of the character shapes", 76),
    "zer": ("mfeat-zer.csv.gz", "Zernike moments", 47),
    "mor": ("mfeat-mor.csv.gz", "morphological features", 6),
}
NUM_EXAMPLES = 2000
NUM_CLASSES = 10
DEFAULT_SPLIT_SIZES = {"train": 1400, "validation": 200, "test": 400}


def _read_view(name: str) -> tuple[np.ndarray, np.ndarray]:
    filename, _, width = VIEWS[name]
    path = resources.files(__package__) / "uci_multiple_features" / filename
    with path.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", skiprows=1, dtype=np.float64)
    if table.shape != (NUM_EXAMPLES, width + 1):
        raise ValueError(f"{filename}: expected {NUM_EXAMPLES} rows x {width + 1} columns, got {table.shape}")
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int32)


def load(views: tuple[str, ...] | list[str] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All 2,000 examples: `({view: float32 [2000, D_view]}, labels int32 [2000])`."""
    views = tuple(VIEWS) if views is None else tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown UCI Multiple Features view(s) {unknown}; known: {list(VIEWS)}")
    features, labels = {}, None
    for name in views:
        features[name], view_labels = _read_view(name)
        if labels is None:
            labels = view_labels
        elif not np.array_equal(labels, view_labels):
            raise ValueError(f"view {name!r} is not row-aligned with the others (labels differ)")
    return features, labels


def stratified_split(
    labels: np.ndarray, sizes: dict[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Deterministic split of the example indices with every class in the same share
    in each split (sizes must be multiples of the number of classes' equal counts)."""
    sizes = dict(DEFAULT_SPLIT_SIZES if sizes is None else sizes)
    if sum(sizes.values()) > len(labels):
        raise ValueError(f"split sizes {sizes} exceed the {len(labels)} examples")
    classes = np.unique(labels)
    for split, size in sizes.items():
        if size % len(classes):
            raise ValueError(f"split {split!r} size {size} is not a multiple of the {len(classes)} classes")
    rng = np.random.default_rng(seed)
    per_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    splits, offset = {}, 0
    for split, size in sizes.items():
        share = size // len(classes)
        splits[split] = np.sort(np.concatenate([per_class[c][offset : offset + share] for c in classes]))
        offset += share
    return splits


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Zero mean, unit variance per feature, fitted on `train` only (constant features
    are centred and left unscaled)."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return [((x - mean) / std).astype(np.float32) for x in (train, *others)]
