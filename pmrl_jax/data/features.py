"""Bring-your-own features: `DIR/<split>/<modality>.npy` (float `[N, D_m]`, row i of every
file the same instance) and an optional `DIR/<split>/label.npy` (integer `[N]`).

Files are memory-mapped: opening a split reads headers only (and, unless disabled, scans
the rows once for NaN/inf in chunks), and an example is read when it is asked for. The
source follows grain's random-access protocol (`__len__`, `__getitem__`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

LABEL_FILE = "label.npy"
_SCAN_ROWS = 65536


class FeaturesError(ValueError):
    """Bad or missing feature files; the message names the file, modality and row."""


def modalities_in(directory: str | os.PathLike, split: str = "train") -> tuple[str, ...]:
    """The modalities of a features directory: the stem of every `.npy` file of its
    `split` folder but `label.npy`, sorted by name; each must hold a float [N, D] array
    (its header is read, not its rows)."""
    split_dir = os.path.join(os.fspath(directory), split)
    if not os.path.isdir(split_dir):
        raise FeaturesError(f"split {split!r}: missing directory {split_dir} (a features directory holds "
                            f"<split>/<modality>.npy)")
    names = sorted(name[: -len(".npy")] for name in os.listdir(split_dir)
                   if name.endswith(".npy") and name != LABEL_FILE)
    if not names:
        raise FeaturesError(f"split {split!r}: {split_dir} holds no <modality>.npy file")
    for name in names:
        _check_layout(_open(os.path.join(split_dir, f"{name}.npy"), name), os.path.join(split_dir, f"{name}.npy"), name)
    return tuple(names)


def _check_layout(array: np.ndarray, path: str, modality: str) -> None:
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise FeaturesError(
            f"modality {modality!r}: {path} must hold a float [N, D] array (float16, 32 or 64); got "
            f"{array.dtype} {array.shape}{' (integer labels belong in label.npy)' if array.ndim == 1 else ''}"
        )


def _open(path: str, modality: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FeaturesError(f"modality {modality!r}: missing file {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise FeaturesError(f"modality {modality!r}: cannot read {path} as a .npy array ({error})") from None


def first_non_finite_row(array: np.ndarray) -> int | None:
    """Index of the first row holding NaN or inf, scanning in chunks; None if all finite."""
    for start in range(0, array.shape[0], _SCAN_ROWS):
        chunk = np.asarray(array[start : start + _SCAN_ROWS])
        bad = ~np.isfinite(chunk).reshape(chunk.shape[0], -1).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


class FeaturesSource:
    """Random access to one split of a features directory.

    Args:
      directory: the dataset root holding one folder per split.
      split: e.g. "train", "validation", "test".
      modalities: file stems to read, in the order they become the k rows.
      dims: optional `{modality: D_m}` the configuration expects.
      check_finite: scan every file for NaN/inf once, at open.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        split: str,
        modalities: Sequence[str],
        dims: Mapping[str, int] | None = None,
        check_finite: bool = True,
    ):
        self.directory = os.fspath(directory)
        self.split = split
        self.modalities = tuple(modalities)
        if not self.modalities:
            raise FeaturesError("no modalities requested")
        split_dir = os.path.join(self.directory, split)
        if not os.path.isdir(split_dir):
            raise FeaturesError(f"split {split!r}: missing directory {split_dir}")
        self.arrays: dict[str, np.ndarray] = {}
        rows = None
        for modality in self.modalities:
            path = os.path.join(split_dir, f"{modality}.npy")
            array = _open(path, modality)
            _check_layout(array, path, modality)
            if dims is not None and modality in dims and array.shape[1] != dims[modality]:
                raise FeaturesError(
                    f"modality {modality!r}: {path} has dimension {array.shape[1]}, the config says {dims[modality]}"
                )
            if rows is None:
                rows, first = array.shape[0], modality
            elif array.shape[0] != rows:
                raise FeaturesError(
                    f"modality {modality!r}: {path} has {array.shape[0]} rows but {first!r} has {rows}"
                )
            if check_finite:
                bad_row = first_non_finite_row(array)
                if bad_row is not None:
                    raise FeaturesError(f"modality {modality!r}: {path} has NaN or inf in row {bad_row}")
            self.arrays[modality] = array
        self.num_examples = rows
        label_path = os.path.join(split_dir, LABEL_FILE)
        self.labels = None
        if os.path.exists(label_path):
            labels = _open(label_path, "label")
            if labels.shape != (rows,) or not np.issubdtype(labels.dtype, np.integer):
                raise FeaturesError(f"labels: {label_path} must hold integers of shape ({rows},); got {labels.dtype} {labels.shape}")
            self.labels = labels

    @property
    def dims(self) -> dict[str, int]:
        return {m: a.shape[1] for m, a in self.arrays.items()}

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return self.read_batch(index)

    def read_batch(self, indices) -> dict[str, np.ndarray]:
        """Rows `indices` (an int or an index array) of every modality: one
        fancy-indexing read per memory-mapped file."""
        batch = {m: np.asarray(a[indices], dtype=np.float32) for m, a in self.arrays.items()}
        if self.labels is not None:
            batch["label"] = np.asarray(self.labels[indices], dtype=np.int32)
        return batch

    def __repr__(self) -> str:
        return f"FeaturesSource({self.directory!r}, split={self.split!r}, n={self.num_examples}, dims={self.dims})"


def write_split(directory: str | os.PathLike, split: str, arrays: Mapping[str, np.ndarray], labels=None) -> None:
    """Writes one split in the features layout (each file written whole, then renamed
    into place, so a crash never leaves a half-written .npy under its final name)."""
    split_dir = os.path.join(os.fspath(directory), split)
    os.makedirs(split_dir, exist_ok=True)
    items = dict(arrays)
    if labels is not None:
        items[LABEL_FILE[: -len(".npy")]] = np.asarray(labels)
    for name, array in items.items():
        final = os.path.join(split_dir, f"{name}.npy")
        partial = final + ".partial"
        with open(partial, "wb") as handle:
            np.save(handle, np.asarray(array), allow_pickle=False)
        os.replace(partial, final)
