"""PNG plots of a run, written into its workdir by process 0 (matplotlib, Agg backend):

    retrieval_r1.png    any-to-any R@1, rows the query modality, columns the candidate
    sigma1.png          sigma_1 / sqrt(k) of the test instances' [k, d] embeddings,
                        before training (the initial parameters) and after (1 = aligned)
    robustness.png      mean any-to-any R@1 against the input noise level, one curve per
                        method (`robustness_plot` takes several runs' results)
    training.png        the logged training losses against the step, and the validation
                        R@1 of model selection
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)  # never a half-written PNG
    _pyplot().close(fig)
    return path


def recall_matrix(table: Mapping[str, Mapping[str, float]], modalities: Sequence[str], key: str = "R@1") -> np.ndarray:
    matrix = np.full((len(modalities), len(modalities)), np.nan)
    for i, query in enumerate(modalities):
        for j, candidate in enumerate(modalities):
            if i != j:
                matrix[i, j] = table[f"{query}->{candidate}"][key]
    return matrix


def retrieval_heatmap(table, modalities: Sequence[str], path: str, title: str = "") -> str:
    plt = _pyplot()
    matrix = recall_matrix(table, modalities)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(modalities), 0.6 + 0.8 * len(modalities)))
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    for i, j in zip(*np.where(~np.isnan(matrix)), strict=True):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                color="white" if matrix[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(modalities)), modalities)
    ax.set_yticks(range(len(modalities)), modalities)
    ax.set_xlabel("candidate modality")
    ax.set_ylabel("query modality")
    ax.set_title(title or f"R@1, mean {table['mean']['R@1']:.3f}")
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def sigma1_histogram(before: np.ndarray, after: np.ndarray, path: str) -> str:
    """`before` and `after`: sigma_1 / sqrt(k) per test instance."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(min(before.min(), after.min()), 1.0, 40)
    ax.hist(before, bins=bins, alpha=0.6, label=f"before training (mean {before.mean():.3f})")
    ax.hist(after, bins=bins, alpha=0.6, label=f"after training (mean {after.mean():.3f})")
    ax.set_xlabel("sigma_1 / sqrt(k) of an instance (1 = all modalities aligned)")
    ax.set_ylabel("test instances")
    ax.legend()
    return _save(fig, path)


def robustness_plot(curves: Mapping[str, Mapping], path: str) -> str:
    """`curves`: {method: the robustness evaluator's result}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for method, curve in curves.items():
        ax.plot(curve["levels"], curve["R@1"], marker="o", label=method)
    ax.set_xlabel("Gaussian noise added to every input, in units of each feature's train std")
    ax.set_ylabel("mean any-to-any R@1")
    ax.set_ylim(0, None)
    ax.legend()
    return _save(fig, path)


def training_curves(metrics_path: str, path: str) -> str:
    """The training losses against the step and, where model selection ran, the mean
    validation R@1 on a second axis."""
    plt = _pyplot()
    with open(metrics_path) as f:
        records = [json.loads(line) for line in f]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in ("loss", "contrastive_loss", "matching_loss"):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            ax.plot(*zip(*points), label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(loc="upper left")
    validation = [(r["step"], r["validation/mean_R@1"]) for r in records if "validation/mean_R@1" in r]
    if validation:
        right = ax.twinx()
        right.plot(*zip(*validation), "o-", color="black", markersize=3, label="validation mean R@1")
        right.set_ylabel("validation mean R@1")
        right.legend(loc="upper right")
    return _save(fig, path)
