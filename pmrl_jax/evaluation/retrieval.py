"""Retrieval: any-to-any R@1/5/10, MedR and MnR for every ordered pair of modalities
(`config.eval.similarity`), and set queries such as "pix->fac+kar", a query against the
set of the other modalities, as in GRAM's and PMRL's retrieval
(`config.eval.retrieval.set_queries`), each scored by every measure of
`config.eval.retrieval.set_similarities`.

Where every modality's inputs are feature vectors of one width (embeddings from
pretrained encoders), the same tables are computed on the inputs themselves (`frozen`):
what the model is to improve on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from pmrl_jax.configs import ConfigError
from pmrl_jax.data.pipeline import read_batch
from pmrl_jax.evaluation.context import EvalContext
from pmrl_jax.evaluation.metrics import format_table, mean_row, retrieval_metrics

Ranker = Callable[[np.ndarray, np.ndarray, str], np.ndarray]


def parse_set_query(text: str, modalities: Sequence[str],
                    field: str = "config.eval.retrieval.set_queries entry") -> tuple[list[str], list[str]]:
    """"pix->fac+kar" -> (["pix"], ["fac", "kar"]); a ConfigError naming `field` if malformed."""
    query, arrow, candidate = text.partition("->")
    sides = [side.split("+") for side in (query, candidate)]
    unknown = [m for side in sides for m in side if m not in modalities]
    if not arrow or unknown or not all(sides[0]) or not all(sides[1]) or set(sides[0]) & set(sides[1]):
        raise ConfigError(f"{field} {text!r}: expected 'a+b->c+d' over the disjoint modalities "
                          f"of {list(modalities)}{f'; unknown {unknown}' if unknown else ''}")
    return sides[0], sides[1]


def any_to_any(rank: Ranker, z: np.ndarray, modalities: Sequence[str], similarity: str) -> dict:
    """{"q->c": metrics} for every ordered pair of `z`'s [N, k, d] modalities, and "mean"."""
    table = {}
    for q, c in itertools.permutations(range(len(modalities)), 2):
        table[f"{modalities[q]}->{modalities[c]}"] = retrieval_metrics(rank(z[:, q:q + 1], z[:, c:c + 1], similarity))
    table["mean"] = mean_row(table)
    return table


def set_queries(rank: Ranker, z: np.ndarray, modalities: Sequence[str], queries: Sequence[str],
                similarity: str) -> dict:
    table = {}
    for text in queries:
        query, candidate = parse_set_query(text, modalities)
        index = [[list(modalities).index(m) for m in side] for side in (query, candidate)]
        table[text] = retrieval_metrics(rank(z[:, index[0]], z[:, index[1]], similarity))
    return table


def positive_cosines(z: np.ndarray, modalities: Sequence[str]) -> dict:
    """{"a-b": the mean over instances of cos(z_a, z_b)} for every unordered pair of `z`'s
    [N, k, d] modalities: how close each instance's own views are. A volume can be small
    with views pointing opposite ways (a line is flat whatever its directions), which a
    cosine, and this mean, punishes."""
    unit = z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    return {f"{modalities[a]}-{modalities[b]}": float(np.mean(np.sum(unit[:, a] * unit[:, b], axis=-1)))
            for a, b in itertools.combinations(range(len(modalities)), 2)}


def frozen_inputs(context: EvalContext) -> tuple[np.ndarray | None, str]:
    """(the eval split's inputs as unit rows [N, k, D], "") when every modality is a float
    feature vector of one width D; else (None, why not)."""
    source = context.source()
    batch = read_batch(source, np.arange(len(source)))
    arrays = [batch[m] for m in context.modalities]
    shapes = {m: a.shape[1:] for m, a in zip(context.modalities, arrays)}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1 or \
            not all(np.issubdtype(a.dtype, np.floating) for a in arrays):
        return None, f"the inputs are not feature vectors of one width ({ {m: s for m, s in shapes.items()} })"
    x = np.stack(arrays, axis=1).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12), ""


class Retrieval:
    name = "retrieval"

    @staticmethod
    def check(config) -> None:
        for text in config.eval.retrieval.set_queries or ():
            parse_set_query(text, list(config.data.modalities))

    def run(self, context: EvalContext) -> dict:
        config, modalities = context.config, context.modalities
        z = context.embedded().embeddings
        section = config.eval.retrieval
        measures = tuple(section.set_similarities)
        result = {"similarity": config.eval.similarity,
                  "any_to_any": any_to_any(context.ranks, z, modalities, config.eval.similarity),
                  "positive_cosine": positive_cosines(z, modalities),
                  "set_similarities": list(measures),
                  "set_queries": {m: set_queries(context.ranks, z, modalities, section.set_queries, m)
                                  for m in measures}}
        frozen, why = frozen_inputs(context)
        if frozen is None:
            result["frozen"] = {"skipped": why}
        else:
            result["frozen"] = {
                "any_to_any": any_to_any(context.ranks, frozen, modalities, config.eval.similarity),
                "positive_cosine": positive_cosines(frozen, modalities),
                "set_queries": {m: set_queries(context.ranks, frozen, modalities, section.set_queries, m)
                                for m in measures}}
        return result

    def summary(self, result: dict) -> str:
        frozen = result.get("frozen", {})
        text = format_table(result["any_to_any"], f"any-to-any retrieval, {result['similarity']} similarity")
        if "any_to_any" in frozen:
            before, after = frozen["any_to_any"]["mean"]["R@1"], result["any_to_any"]["mean"]["R@1"]
            text += "\n\n" + format_table(frozen["any_to_any"], "the same on the inputs themselves (frozen)")
            text += f"\nmean R@1: {before:.3f} frozen -> {after:.3f} trained ({after - before:+.3f})"
        cosines = result["positive_cosine"]
        weakest = min(cosines, key=cosines.get)
        text += (f"\nmean cosine of an instance's own views: {np.mean(list(cosines.values())):.3f} over the pairs, "
                 f"lowest {cosines[weakest]:.3f} ({weakest})")
        if any(result["set_queries"].values()):
            text += "\n\n" + recall_by_measure(result["set_queries"], "set queries: R@1 by measure")
            if "set_queries" in frozen:
                text += "\n\n" + recall_by_measure(frozen["set_queries"], "set queries on the inputs (frozen): R@1")
        return text


def recall_by_measure(tables: dict, title: str) -> str:
    """{measure: {query: metrics}} as one table of R@1: a row per query, a column per measure."""
    measures = list(tables)
    queries = list(next(iter(tables.values())))
    width = max(len(q) for q in queries)
    lines = [title, f"{'query':{width}s} " + " ".join(f"{m:>17s}" for m in measures)]
    for query in queries:
        lines.append(f"{query:{width}s} " + " ".join(f"{tables[m][query]['R@1']:17.3f}" for m in measures))
    return "\n".join(lines)
