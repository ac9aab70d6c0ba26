"""Bring-your-own features: `DIR/<split>/<modality>.npy` (float `[N, D_m]`, row i of every
file the same instance) and an optional `DIR/<split>/label.npy` (integer `[N]`).

A modality may also be raw text, one instance per line: `DIR/<split>/<modality>.txt`
(UTF-8, one line each, so a text holds no newline) or `DIR/<split>/<modality>.jsonl` (one
JSON string per line, so a text may hold any character). Its rows are Python strings;
the training job turns them into token ids in the input pipeline (`pmrl_jax.data.text`).
A `.jsonl` file whose first line is not a JSON string (a table of records, such as the
raw texts kept beside some datasets) is not a modality.

Feature files are memory-mapped: opening a split reads headers only (and, unless
disabled, scans the rows once for NaN/inf in chunks), and an example is read when it is
asked for; text files are read whole. The source follows grain's random-access protocol
(`__len__`, `__getitem__`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

LABEL_FILE = "label.npy"
TEXT_SUFFIXES = (".txt", ".jsonl")
_SCAN_ROWS = 65536


class FeaturesError(ValueError):
    """Bad or missing feature files; the message names the file, modality and row."""


def _is_text_view(path: str) -> bool:
    if path.endswith(".txt"):
        return True
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    try:
        return isinstance(json.loads(first), str)
    except ValueError:
        return False


def modalities_in(directory: str | os.PathLike, split: str = "train") -> tuple[str, ...]:
    """The modalities of a features directory: the stem of every `.npy` file of its
    `split` folder but `label.npy`, and of every text view (`.txt`, or `.jsonl` of
    strings), sorted by name; each `.npy` must hold a float [N, D] array (its header is
    read, not its rows)."""
    split_dir = os.path.join(os.fspath(directory), split)
    if not os.path.isdir(split_dir):
        raise FeaturesError(f"split {split!r}: missing directory {split_dir} (a features directory holds "
                            f"<split>/<modality>.npy)")
    files = sorted(os.listdir(split_dir))
    arrays = [name[: -len(".npy")] for name in files if name.endswith(".npy") and name != LABEL_FILE]
    texts = [os.path.splitext(name)[0] for name in files if name.endswith(TEXT_SUFFIXES)
             and _is_text_view(os.path.join(split_dir, name))]
    twice = sorted(set(name for name in arrays + texts if (arrays + texts).count(name) > 1))
    if twice:
        raise FeaturesError(f"split {split!r}: {split_dir} holds more than one file for modality {twice[0]!r} "
                            f"(.npy, .txt or .jsonl: keep one)")
    if not arrays and not texts:
        raise FeaturesError(f"split {split!r}: {split_dir} holds no <modality>.npy, .txt or .jsonl file")
    for name in arrays:
        _check_layout(_open(os.path.join(split_dir, f"{name}.npy"), name), os.path.join(split_dir, f"{name}.npy"), name)
    return tuple(sorted(arrays + texts))


def read_texts(path: str, modality: str) -> np.ndarray:
    """The lines of a text view as an object array of str: `.txt`, one text per line
    (a final newline ends the last line, it does not start another; a carriage return
    before a newline is dropped); `.jsonl`, one JSON string per line."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            content = handle.read()
    except UnicodeDecodeError as error:
        raise FeaturesError(f"modality {modality!r}: {path} is not UTF-8 text ({error})") from None
    lines = content.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if path.endswith(".jsonl"):
        texts = []
        for number, line in enumerate(lines, 1):
            try:
                text = json.loads(line)
            except ValueError as error:
                raise FeaturesError(f"modality {modality!r}: {path} line {number} is not JSON ({error})") from None
            if not isinstance(text, str):
                raise FeaturesError(f"modality {modality!r}: {path} line {number} holds a {type(text).__name__}, "
                                    f"not a JSON string")
            texts.append(text)
        lines = texts
    array = np.empty(len(lines), dtype=object)
    array[:] = lines
    return array


def _view_path(split_dir: str, modality: str) -> str:
    """The file of a modality: `<modality>.npy`, else `.txt`, else `.jsonl`."""
    for suffix in (".npy",) + TEXT_SUFFIXES:
        path = os.path.join(split_dir, modality + suffix)
        if os.path.isfile(path):
            return path
    raise FeaturesError(f"modality {modality!r}: missing file {os.path.join(split_dir, modality)}.npy (or "
                        f"{modality}.txt / {modality}.jsonl for raw text)")


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
        self.texts: dict[str, np.ndarray] = {}
        rows = None
        for modality in self.modalities:
            path = _view_path(split_dir, modality)
            if path.endswith(".npy"):
                view = _open(path, modality)
                _check_layout(view, path, modality)
                if dims is not None and modality in dims and view.shape[1] != dims[modality]:
                    raise FeaturesError(
                        f"modality {modality!r}: {path} has dimension {view.shape[1]}, the config says {dims[modality]}"
                    )
            else:
                view = read_texts(path, modality)
            if rows is None:
                rows, first = len(view), modality
            elif len(view) != rows:
                unit = "rows" if path.endswith(".npy") else "lines"
                raise FeaturesError(f"modality {modality!r}: {path} has {len(view)} {unit} but {first!r} has {rows} rows")
            if view.dtype == object:
                self.texts[modality] = view
                continue
            if check_finite:
                bad_row = first_non_finite_row(view)
                if bad_row is not None:
                    raise FeaturesError(f"modality {modality!r}: {path} has NaN or inf in row {bad_row}")
            self.arrays[modality] = view
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
        batch.update({m: texts[indices] for m, texts in self.texts.items()})
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
