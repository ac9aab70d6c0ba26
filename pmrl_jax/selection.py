"""Model selection on the validation split.

Every `config.eval.every` steps of the final loss's stage (and at its first step: the
initial model, or the model the warm start left), the mean any-to-any R@1 on
`config.data.validation_split` scores the model, or with `config.eval.select_query` the
R@1 of that set query (by `config.eval.select_similarity`). The best step is kept as a checkpoint
(`pmrl_jax.checkpoints` keeps it past the newest ones), the final evaluation uses it,
and with `config.eval.patience` the run stops after that many evaluations without a
better score. The record travels in every checkpoint, so a resumed run selects exactly
as an uninterrupted one.

Including the stage's first step means that on inputs that are already embeddings (the
`adapter` encoder starts as the identity) the chosen model is never worse on validation
than the inputs themselves.
"""

from __future__ import annotations

import ml_collections

from pmrl_jax.evaluation.context import EvalContext
from pmrl_jax.evaluation.retrieval import any_to_any, set_queries

METRIC = "mean_R@1"


def empty_record() -> dict:
    return {"best_step": None, "best_score": None, "evaluations_without_improvement": 0, "stopped_early": False,
            "history": []}


def enabled(config: ml_collections.ConfigDict, validation_source) -> bool:
    return bool(config.eval.every) and validation_source is not None


def first_step(config: ml_collections.ConfigDict) -> int:
    """The final loss's first step: where selection starts."""
    return config.warm_start.steps if config.warm_start.loss else 0


def due(config: ml_collections.ConfigDict, step: int) -> bool:
    """Whether the model after `step` steps is scored."""
    start = first_step(config)
    return step >= start and (step == start or step % config.eval.every == 0 or step == config.num_steps)


def validation_score(config: ml_collections.ConfigDict, trainer, state, source) -> float:
    """Mean any-to-any R@1 on `source` by `config.eval.similarity`, or the R@1 of the set
    query `config.eval.select_query` by `config.eval.select_similarity`."""
    split = config.data.validation_split
    context = EvalContext(config, trainer, state, {split: source})
    z = context.embedded(split).embeddings
    query = config.eval.select_query
    if query:
        measure = config.eval.select_similarity or config.eval.similarity
        return set_queries(context.ranks, z, context.modalities, [query], measure)[query]["R@1"]
    return any_to_any(context.ranks, z, context.modalities, config.eval.similarity)["mean"]["R@1"]


def record_score(record: dict, config: ml_collections.ConfigDict, step: int, score: float) -> bool:
    """Adds `score` of `step` to `record`; True when it is the best so far (ties keep the
    earlier step). Sets `stopped_early` when the patience has run out."""
    record["history"].append([step, score])
    if record["best_score"] is None or score > record["best_score"]:
        record.update(best_step=step, best_score=score, evaluations_without_improvement=0)
        return True
    record["evaluations_without_improvement"] += 1
    if config.eval.patience and record["evaluations_without_improvement"] >= config.eval.patience:
        record["stopped_early"] = True
    return False
