"""Evaluators, run by name after training or on a checkpoint (`config.evals`).

    retrieval       any-to-any R@1/5/10, MedR, MnR for every ordered pair of modalities
                    (`config.eval.similarity`), and for set queries such as
                    "pix->fac+kar" (`config.eval.set_queries`, `config.eval.set_similarity`)
    rerank          the top-K candidates (`config.eval.rerank_top_k`) of the anchor ->
                    others and others -> anchor directions, ranked by the training
                    measure (`config.loss.similarity`), re-scored by the matching head
    classification  zero-shot by class prototypes: the mean training embedding of each
                    class, per modality, and (`config.eval.class_descriptions`) one
                    embedded description per class; top-1 / top-5 accuracy
    robustness      mean any-to-any R@1/5/10 with Gaussian noise of each level in
                    `config.eval.noise_levels` added to every input (PMRL's noise study)

Each evaluator is a small class with `run(context) -> dict` (JSON-ready) and
`summary(result) -> str`. Scores are ranked blockwise over the devices
(`pmrl_jax.scoring`): no N x N matrix is built.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from pmrl_jax import evaluate as ev
from pmrl_jax import scoring
from pmrl_jax.configs import ConfigError


@dataclasses.dataclass
class EvalContext:
    """What evaluators share: the model state, and embeddings computed once per (split, noise)."""

    config: ml_collections.ConfigDict
    trainer: object
    state: object
    sources: dict = dataclasses.field(default_factory=dict)
    _embedded: dict = dataclasses.field(default_factory=dict)

    @property
    def modalities(self) -> list[str]:
        return list(self.config.data.modalities)

    @property
    def split(self) -> str:
        return self.config.data.eval_split

    def source(self, split: str):
        if split not in self.sources:
            from pmrl_jax.train import data_sources

            self.sources[split] = data_sources(self.config, (split,))[split]
        return self.sources[split]

    def embedded(self, split: str | None = None, noise: float = 0.0, tokens: bool = False) -> ev.Embedded:
        key = (split or self.split, noise)
        if key not in self._embedded or (tokens and self._embedded[key].tokens is None):
            self._embedded[key] = ev.embed_split(self.trainer, self.state, self.source(key[0]),
                                                 batch_size=self.config.data.eval_batch_size,
                                                 noise=noise, seed=self.config.seed, tokens=tokens)
        return self._embedded[key]

    def ranks(self, queries: np.ndarray, candidates: np.ndarray, similarity: str) -> np.ndarray:
        return scoring.diagonal_ranks(queries, candidates, similarity, self.trainer.mesh,
                                      tile=self.config.eval.tile)


def parse_set_query(text: str, modalities: Sequence[str]) -> tuple[list[str], list[str]]:
    """"pix->fac+kar" -> (["pix"], ["fac", "kar"])."""
    query, arrow, candidate = text.partition("->")
    sides = [side.split("+") for side in (query, candidate)]
    unknown = [m for side in sides for m in side if m not in modalities]
    if not arrow or unknown or not all(sides[0]) or not all(sides[1]) or set(sides[0]) & set(sides[1]):
        raise ConfigError(f"config.eval.set_queries entry {text!r}: expected 'a+b->c+d' over the disjoint modalities "
                          f"of {list(modalities)}{f'; unknown {unknown}' if unknown else ''}")
    return sides[0], sides[1]


def _mean_row(table: dict) -> dict:
    return {key: float(np.mean([row[key] for row in table.values()])) for key in next(iter(table.values()))}


class Retrieval:
    name = "retrieval"

    def run(self, context: EvalContext) -> dict:
        config, modalities = context.config, context.modalities
        z = context.embedded().embeddings
        pairs = {}
        for q, c in itertools.permutations(range(len(modalities)), 2):
            ranks = context.ranks(z[:, q:q + 1], z[:, c:c + 1], config.eval.similarity)
            pairs[f"{modalities[q]}->{modalities[c]}"] = ev.retrieval_metrics(ranks)
        pairs["mean"] = _mean_row(pairs)
        sets = {}
        for text in config.eval.set_queries:
            query, candidate = parse_set_query(text, modalities)
            index = [[modalities.index(m) for m in side] for side in (query, candidate)]
            sets[text] = ev.retrieval_metrics(context.ranks(z[:, index[0]], z[:, index[1]], config.eval.set_similarity))
        return {"similarity": config.eval.similarity, "any_to_any": pairs,
                "set_similarity": config.eval.set_similarity, "set_queries": sets}

    def summary(self, result: dict) -> str:
        text = ev.format_table(result["any_to_any"], f"any-to-any retrieval, {result['similarity']} similarity")
        if result["set_queries"]:
            text += "\n\n" + ev.format_table(result["set_queries"], f"set queries, {result['set_similarity']} similarity")
        return text


class Rerank:
    name = "rerank"

    def run(self, context: EvalContext) -> dict:
        config, modalities = context.config, context.modalities
        if not config.model.matching.enabled:
            raise ConfigError("the 'rerank' evaluator needs the matching head: config.model.matching.enabled is False")
        anchor = config.loss.anchor
        others = [m for m in range(len(modalities)) if m != anchor]
        embedded = context.embedded(tokens=True)
        z, tokens = embedded.embeddings, embedded.tokens
        anchor_tokens = tokens[modalities[anchor]]
        other_tokens = np.concatenate([tokens[modalities[m]] for m in others], axis=1)
        top_k = min(config.eval.rerank_top_k, len(z))
        head = _matching_scores(context)
        name_others = "+".join(modalities[m] for m in others)
        result = {"top_k": top_k, "similarity": config.loss.similarity}
        for direction, queries, candidates, query_is_anchor in (
                (f"{modalities[anchor]}->{name_others}", z[:, [anchor]], z[:, others], True),
                (f"{name_others}->{modalities[anchor]}", z[:, others], z[:, [anchor]], False)):
            plain_ranks = context.ranks(queries, candidates, config.loss.similarity)
            shortlist = scoring.top_candidates(queries, candidates, config.loss.similarity, context.trainer.mesh,
                                               top_k, tile=config.eval.tile)
            query_index = np.repeat(np.arange(len(z)), top_k)
            candidate_index = shortlist.reshape(-1)
            if query_is_anchor:
                scores = head(anchor_tokens, other_tokens, query_index, candidate_index)
            else:
                scores = head(anchor_tokens, other_tokens, candidate_index, query_index)
            reranked = rerank_ranks(plain_ranks, shortlist, scores.reshape(len(z), top_k))
            result[direction] = {"plain": ev.retrieval_metrics(plain_ranks),
                                 "reranked": ev.retrieval_metrics(reranked)}
        return result

    def summary(self, result: dict) -> str:
        rows = {}
        for direction, value in result.items():
            if isinstance(value, dict):
                rows[f"{direction} ({result['similarity']})"] = value["plain"]
                rows[f"{direction} (re-ranked)"] = value["reranked"]
        return ev.format_table(rows, f"re-ranking the top {result['top_k']} with the matching head")


def rerank_ranks(plain_ranks: np.ndarray, shortlist: np.ndarray, head_scores: np.ndarray) -> np.ndarray:
    """New rank of each query's true match (candidate i for query i): among the
    shortlist by the head's score (ties against), or unchanged when the shortlist
    missed it (it then stays behind all K)."""
    ranks = plain_ranks.copy()
    own = shortlist == np.arange(len(shortlist))[:, None]
    found = own.any(axis=1)
    positive = np.where(own, head_scores, -np.inf).max(axis=1)
    at_least_as_good = ~(head_scores < positive[:, None]) & ~own
    ranks[found] = 1 + at_least_as_good[found].sum(axis=1)
    return ranks


def _matching_scores(context: EvalContext, chunk: int = 4096):
    """score(anchor tokens [N, n, w], data tokens [N, m, w], anchor rows [P], data rows
    [P]) -> the head's match log-odds [P] of each (anchor row, data row) pair, gathered
    and scored `chunk` pairs at a time (N x K pairs of tokens would not fit in memory)."""
    trainer, state = context.trainer, context.state

    @jax.jit
    def logits(state, anchor_tokens, data_tokens):
        out = trainer.model(state).matching(anchor_tokens, data_tokens)
        return out[:, 1] - out[:, 0]

    def score(anchor_tokens, data_tokens, anchor_rows: np.ndarray, data_rows: np.ndarray) -> np.ndarray:
        pieces = []
        for start in range(0, len(anchor_rows), chunk):
            rows = slice(start, start + chunk)
            a, d = anchor_tokens[anchor_rows[rows]], data_tokens[data_rows[rows]]
            size = len(a)
            if size < chunk:  # one compiled shape
                a, d = (np.concatenate([x, np.zeros((chunk - size,) + x.shape[1:], x.dtype)]) for x in (a, d))
            pieces.append(np.asarray(logits(state, a, d))[:size])
        return np.concatenate(pieces)

    return score


class Classification:
    name = "classification"

    def run(self, context: EvalContext) -> dict:
        train, test = context.embedded("train"), context.embedded()
        if train.labels is None or test.labels is None:
            return {"skipped": f"dataset {context.config.data.name!r} has no labels"}
        classes = np.unique(train.labels)
        result = {"num_classes": int(len(classes)), "per_modality": {}}
        for m, name in enumerate(context.modalities):
            prototypes = np.stack([train.embeddings[train.labels == c, m].mean(axis=0) for c in classes])
            prototypes /= np.maximum(np.linalg.norm(prototypes, axis=1, keepdims=True), 1e-12)
            scores = test.embeddings[:, m] @ prototypes.T
            result["per_modality"][name] = top_k_accuracy(scores, np.searchsorted(classes, test.labels), classes)
        result["per_modality"]["mean"] = _mean_row(result["per_modality"])
        if context.config.eval.class_descriptions:
            result["by_description"] = self.by_description(context, test, classes)
        return result

    def by_description(self, context: EvalContext, test: ev.Embedded, classes: np.ndarray) -> dict:
        """Zero-shot with one embedded input per class (e.g. the token ids of "a photo of
        a <class>") of `config.eval.class_description_modality` as the prototypes that
        every modality's test embeddings are matched against."""
        from pmrl_jax.data.pipeline import ArraySource, read_batch

        config, modalities = context.config, context.modalities
        modality, path = config.eval.class_description_modality, config.eval.class_descriptions
        if modality not in modalities:
            raise ConfigError(f"config.eval.class_description_modality={modality!r} is not one of {modalities}")
        if not os.path.exists(path):
            raise FileNotFoundError(f"config.eval.class_descriptions={path!r}: no such file")
        inputs = np.load(path)
        template = read_batch(context.source(context.split), np.zeros(1, np.int64))
        if inputs.shape != (len(classes),) + template[modality].shape[1:]:
            raise ConfigError(f"config.eval.class_descriptions={path!r} holds {inputs.shape}; expected one "
                              f"{modality!r} input per class: {(len(classes),) + template[modality].shape[1:]}")
        arrays = {m: np.zeros((len(classes),) + template[m].shape[1:], template[m].dtype) for m in modalities}
        arrays[modality] = inputs.astype(template[modality].dtype)
        described = ev.embed_split(context.trainer, context.state, ArraySource(arrays),
                                   batch_size=config.data.eval_batch_size).embeddings[:, modalities.index(modality)]
        targets = np.searchsorted(classes, test.labels)
        result = {name: top_k_accuracy(test.embeddings[:, m] @ described.T, targets, classes)
                  for m, name in enumerate(modalities)}
        result["mean"] = _mean_row(result)
        return result

    def summary(self, result: dict) -> str:
        if "skipped" in result:
            return f"classification skipped: {result['skipped']}"
        lines = [f"zero-shot classification by class prototypes ({result['num_classes']} classes)",
                 f"{'modality':10s} {'top-1':>7s} {'top-5':>7s}"]
        lines += [f"{m:10s} {r['top-1']:7.3f} {r['top-5']:7.3f}" for m, r in result["per_modality"].items()]
        if "by_description" in result:
            lines += ["against the embedded class descriptions"]
            lines += [f"{m:10s} {r['top-1']:7.3f} {r['top-5']:7.3f}" for m, r in result["by_description"].items()]
        return "\n".join(lines)


def top_k_accuracy(scores: np.ndarray, targets: np.ndarray, classes) -> dict[str, float]:
    """Top-1 / top-5 accuracy with ties counted against the model."""
    own = scores[np.arange(len(scores)), targets]
    rank = (~(scores < own[:, None])).sum(axis=1)  # includes the target itself
    return {"top-1": float(np.mean(rank <= 1)), "top-5": float(np.mean(rank <= min(5, len(classes))))}


class Robustness:
    name = "robustness"

    def run(self, context: EvalContext) -> dict:
        config, modalities = context.config, context.modalities
        curve = {"levels": [float(x) for x in config.eval.noise_levels], "similarity": config.eval.similarity}
        for key in ("R@1", "R@5", "R@10"):
            curve[key] = []
        for level in curve["levels"]:
            z = context.embedded(noise=level).embeddings
            rows = [ev.retrieval_metrics(context.ranks(z[:, q:q + 1], z[:, c:c + 1], config.eval.similarity))
                    for q, c in itertools.permutations(range(len(modalities)), 2)]
            for key in ("R@1", "R@5", "R@10"):
                curve[key].append(float(np.mean([r[key] for r in rows])))
        return curve

    def summary(self, result: dict) -> str:
        lines = ["robustness: mean any-to-any recall with N(0, level^2) added to every input",
                 f"{'level':>6s} {'R@1':>7s} {'R@5':>7s} {'R@10':>7s}"]
        lines += [f"{level:6.2f} {r1:7.3f} {r5:7.3f} {r10:7.3f}"
                  for level, r1, r5, r10 in zip(result["levels"], result["R@1"], result["R@5"], result["R@10"],
                                                strict=True)]
        return "\n".join(lines)


EVALUATORS = {cls.name: cls for cls in (Retrieval, Rerank, Classification, Robustness)}


def check_evals(config: ml_collections.ConfigDict) -> None:
    unknown = [name for name in config.evals if name not in EVALUATORS]
    if unknown:
        raise ConfigError(f"config.evals names {unknown}; known evaluators: {', '.join(EVALUATORS)}")
    if "rerank" in config.evals and not config.model.matching.enabled:
        raise ConfigError("config.evals has 'rerank', which needs the matching head (config.model.matching.enabled)")
    for text in config.eval.set_queries:
        parse_set_query(text, list(config.data.modalities))
    if config.eval.rerank_top_k < 1 or config.eval.tile < 1:
        raise ConfigError(f"config.eval.rerank_top_k={config.eval.rerank_top_k} and config.eval.tile="
                          f"{config.eval.tile} must be >= 1")


def run_evaluators(context: EvalContext) -> dict:
    check_evals(context.config)
    return {name: EVALUATORS[name]().run(context) for name in context.config.evals}
