"""Re-ranking with the matching head: the top-K candidates (`config.eval.rerank.top_k`)
of the anchor -> others and others -> anchor set queries, ranked by the training measure
(`config.loss.similarity`), re-scored by the head (GRAM's DAM / PMRL's IM at test time)."""

from __future__ import annotations

import jax
import numpy as np

from pmrl_jax.configs import ConfigError
from pmrl_jax.evaluation import ranking
from pmrl_jax.evaluation.context import EvalContext
from pmrl_jax.evaluation.metrics import format_table, retrieval_metrics
from pmrl_jax.objectives import anchor_index


def rerank_ranks(plain_ranks: np.ndarray, shortlist: np.ndarray, head_scores: np.ndarray) -> np.ndarray:
    """New rank of each query's true match (candidate i for query i): among the
    shortlist by the head's score (ties against), or unchanged when the shortlist
    missed it (it then stays behind all K)."""
    ranks = plain_ranks.copy()
    own = shortlist == np.arange(len(shortlist))[:, None]
    found = own.any(axis=1)
    positive = np.where(own, head_scores, -np.inf).max(axis=1)
    ranks[found] = ranking.rank_among(positive, head_scores, ~own)[found]
    return ranks


def _padded(array: np.ndarray, rows: int) -> np.ndarray:
    return np.concatenate([array, np.zeros((rows - len(array),) + array.shape[1:], array.dtype)])


def matching_scorer(context: EvalContext, chunk: int = 4096):
    """score(anchor tokens [N, n, w], data tokens [N, m, w], anchor rows [P], data rows
    [P]) -> the head's match log-odds [P] of each (anchor row, data row) pair. Each
    instance is encoded once (`MatchingHead.encode_anchor`, `encode_data`); the pairs'
    encodings are gathered and matched `chunk` at a time, one compiled shape each."""
    trainer, state = context.trainer, context.state

    @jax.jit
    def encode(state, anchor_tokens, data_tokens):
        head = trainer.model(state).matching
        return head.encode_anchor(anchor_tokens), head.encode_data(data_tokens)

    @jax.jit
    def log_odds(state, anchor, data):
        out = trainer.model(state).matching.match(anchor, data)
        return out[:, 1] - out[:, 0]

    def encoded(anchor_tokens, data_tokens):
        pieces = []
        for start in range(0, len(anchor_tokens), chunk):
            size = min(chunk, len(anchor_tokens) - start)
            a, d = (_padded(x[start:start + size], chunk) for x in (anchor_tokens, data_tokens))
            pieces.append(jax.tree.map(lambda t: np.asarray(t)[:size], encode(state, a, d)))
        return jax.tree.map(lambda *parts: np.concatenate(parts), *pieces)

    def score(anchor_tokens, data_tokens, anchor_rows: np.ndarray, data_rows: np.ndarray) -> np.ndarray:
        anchors, data = encoded(anchor_tokens, data_tokens)
        pieces = []
        for start in range(0, len(anchor_rows), chunk):
            rows = slice(start, start + chunk)
            size = len(anchor_rows[rows])
            a = jax.tree.map(lambda t: _padded(t[anchor_rows[rows]], chunk), anchors)
            d = jax.tree.map(lambda t: _padded(t[data_rows[rows]], chunk), data)
            pieces.append(np.asarray(log_odds(state, a, d))[:size])
        return np.concatenate(pieces)

    return score


class Rerank:
    name = "rerank"

    @staticmethod
    def check(config) -> None:
        if config.eval.rerank.top_k < 1:
            raise ConfigError(f"config.eval.rerank.top_k={config.eval.rerank.top_k} must be >= 1")

    def run(self, context: EvalContext) -> dict:
        config, modalities = context.config, context.modalities
        if not config.model.matching.enabled:
            raise ConfigError("the 'rerank' evaluator needs the matching head: config.model.matching.enabled is False")
        anchor = anchor_index(config)
        others = [m for m in range(len(modalities)) if m != anchor]
        embedded = context.embedded(tokens=True)
        z, tokens = embedded.embeddings, embedded.tokens
        anchor_tokens = tokens[modalities[anchor]]
        other_tokens = np.concatenate([tokens[modalities[m]] for m in others], axis=1)
        top_k = min(config.eval.rerank.top_k, len(z))
        head = matching_scorer(context)
        name_others = "+".join(modalities[m] for m in others)
        result = {"top_k": top_k, "similarity": config.loss.similarity}
        for direction, queries, candidates, query_is_anchor in (
                (f"{modalities[anchor]}->{name_others}", z[:, [anchor]], z[:, others], True),
                (f"{name_others}->{modalities[anchor]}", z[:, others], z[:, [anchor]], False)):
            plain_ranks = context.ranks(queries, candidates, config.loss.similarity)
            shortlist = ranking.top_candidates(queries, candidates, config.loss.similarity, context.trainer.mesh,
                                               top_k, tile=config.eval.tile)
            query_index = np.repeat(np.arange(len(z)), top_k)
            candidate_index = shortlist.reshape(-1)
            if query_is_anchor:
                scores = head(anchor_tokens, other_tokens, query_index, candidate_index)
            else:
                scores = head(anchor_tokens, other_tokens, candidate_index, query_index)
            reranked = rerank_ranks(plain_ranks, shortlist, scores.reshape(len(z), top_k))
            result[direction] = {"plain": retrieval_metrics(plain_ranks), "reranked": retrieval_metrics(reranked)}
        return result

    def summary(self, result: dict) -> str:
        rows = {}
        for direction, value in result.items():
            if isinstance(value, dict):
                rows[f"{direction} ({result['similarity']})"] = value["plain"]
                rows[f"{direction} (re-ranked)"] = value["reranked"]
        return format_table(rows, f"re-ranking the top {result['top_k']} with the matching head")
