"""Writing a run's embeddings to disk, for a vector database or any other use:

    python -m pmrl_jax.main --workdir=W --mode=embed --output=OUT [--input=DIR] [--float16]

embeds every split and modality of a features directory `DIR` (`<split>/<modality>.npy`,
the run's modalities; default: the run's own dataset) into

    OUT/<split>/<modality>.npy   unit embeddings [N, d], float32 (or float16)
    OUT/<split>/ids.npy          int64 [N]: each row's position in the input split
    OUT/manifest.json            the run, the step, the config's sha256, the measure, ...

Everything is written under `OUT.partial-<pid>` and renamed to `OUT` when complete, so
an interrupted export leaves nothing at `OUT`; an `OUT` that exists is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import numpy as np

from pmrl_jax.run import Run, RunError
from pmrl_jax.workdir import CONFIG_FILE

SPLITS = ("train", "validation", "test")
READ_ROWS = 65536


def _sources(run: Run, input_dir: str | None) -> dict[str, object]:
    """{split: a source of the run's modalities it holds}."""
    from pmrl_jax.data.features import FeaturesSource
    from pmrl_jax.resolve import open_split

    sources = {}
    if input_dir is None:
        for split in SPLITS:
            try:
                sources[split] = open_split(run.config, split)
            except (ValueError, FileNotFoundError):  # the dataset has no such split
                continue
        if not sources:
            raise RunError(f"the run's dataset {run.config.data.name!r} has none of the splits {SPLITS} here")
        return sources
    if not os.path.isdir(input_dir):
        raise RunError(f"--input={input_dir!r} is not a directory")
    for split in sorted(os.listdir(input_dir)):
        folder = os.path.join(input_dir, split)
        present = [m for m in run.modalities if os.path.isfile(os.path.join(folder, f"{m}.npy"))]
        if os.path.isdir(folder) and present:
            sources[split] = FeaturesSource(input_dir, split, present)
    if not sources:
        raise RunError(f"--input={input_dir!r} holds no <split>/<modality>.npy of the run's modalities "
                       f"{list(run.modalities)}")
    return sources


def _progress(label: str):
    """A progress line on stderr: redrawn in place on a terminal, once at the end otherwise."""
    tty = sys.stderr.isatty()

    def report(done: int, total: int) -> None:
        line = f"embedding {label}: {done}/{total} rows"
        if tty:
            sys.stderr.write("\r" + line + ("\n" if done == total else ""))
        elif done == total:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    return report


def export(run: Run, output: str, input_dir: str | None = None, float16: bool = False) -> dict:
    """Embeds and writes (module docstring); returns the manifest."""
    from pmrl_jax.data.pipeline import read_batch

    output = os.path.normpath(output)
    if os.path.exists(output):
        raise RunError(f"--output={output!r} exists (an earlier export?); choose another or remove it")
    sources = _sources(run, input_dir)
    partial = f"{output}.partial-{os.getpid()}"
    dtype = np.float16 if float16 else np.float32
    counts = {}
    try:
        for split, source in sources.items():
            os.makedirs(os.path.join(partial, split))
            modalities = [m for m in run.modalities if m in getattr(source, "modalities", run.modalities)]
            for modality in modalities:
                pieces, report = [], _progress(f"{split}/{modality}")
                for start in range(0, len(source), READ_ROWS):
                    rows = np.arange(start, min(start + READ_ROWS, len(source)))
                    pieces.append(run.embed({modality: read_batch(source, rows)[modality]}, progress=(
                        lambda done, total, start=start: report(start + done, len(source))))[modality])
                np.save(os.path.join(partial, split, f"{modality}.npy"), np.concatenate(pieces).astype(dtype))
            np.save(os.path.join(partial, split, "ids.npy"), np.arange(len(source), dtype=np.int64))
            counts[split] = {"rows": len(source), "modalities": modalities}
        with open(os.path.join(run.workdir, CONFIG_FILE), "rb") as f:
            config_hash = hashlib.sha256(f.read()).hexdigest()
        manifest = {"workdir": os.path.abspath(run.workdir), "step": int(run.step), "config_sha256": config_hash,
                    "measure": run.config.eval.similarity, "embed_dim": run.embed_dim,
                    "dtype": np.dtype(dtype).name, "input": os.path.abspath(input_dir) if input_dir else
                    f"the run's dataset ({run.config.data.name})", "splits": counts}
        with open(os.path.join(partial, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=2)
        os.rename(partial, output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest
