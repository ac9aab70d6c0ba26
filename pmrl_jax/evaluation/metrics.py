"""Retrieval and classification metrics from ranks, and the printed tables.

Recall@K is the fraction of queries whose true match ranks <= K; MedR and MnR are the
median and mean rank. Ranks count ties against the model (`ranking`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pmrl_jax.evaluation.ranking import rank_among

RECALL_AT = (1, 5, 10)


def retrieval_metrics(ranks: np.ndarray) -> dict[str, float]:
    if np.size(ranks) == 0:
        raise ValueError("retrieval_metrics needs the rank of at least one query; got none")
    metrics = {f"R@{k}": float(np.mean(ranks <= k)) for k in RECALL_AT}
    metrics["MedR"] = float(np.median(ranks))
    metrics["MnR"] = float(np.mean(ranks))
    return metrics


def mean_row(table: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each metric over the table's rows."""
    rows = list(table.values())
    return {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}


def top_k_accuracy(scores: np.ndarray, targets: np.ndarray, classes) -> dict[str, float]:
    """Top-1 / top-5 accuracy of `scores` [N, classes] against `targets` [N] (class
    positions), ties counted against the model."""
    own = scores[np.arange(len(scores)), targets]
    others = np.ones(scores.shape, bool)
    others[np.arange(len(scores)), targets] = False
    rank = rank_among(own, scores, others)
    return {"top-1": float(np.mean(rank <= 1)), "top-5": float(np.mean(rank <= min(5, len(classes))))}


def format_table(table: Mapping[str, Mapping[str, float]], title: str = "") -> str:
    columns = [f"R@{k}" for k in RECALL_AT] + ["MedR", "MnR"]
    width = max(len(name) for name in table)
    lines = [title] if title else []
    lines.append(f"{'pair':{width}s} " + " ".join(f"{c:>7s}" for c in columns))
    for name, row in table.items():
        lines.append(f"{name:{width}s} " + " ".join(
            f"{row[c]:7.3f}" if c.startswith("R@") else f"{row[c]:7.1f}" for c in columns))
    return "\n".join(lines)
