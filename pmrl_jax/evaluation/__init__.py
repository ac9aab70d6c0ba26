"""Evaluation of a trained model on `config.data.eval_split`, by the evaluators named in
`config.evals`:

    retrieval       any-to-any and set-query retrieval, and the same on the frozen inputs
    rerank          the set queries' shortlists re-scored by the matching head
    classification  zero-shot by class prototypes
    robustness      any-to-any retrieval under input noise

An evaluator is a class with a `name`, `run(context) -> dict` (JSON-ready) and
`summary(result) -> str`, in a module of its own; its options are the config section
`config.eval.<name>`, which its optional `check(config)` validates before anything runs.
Adding one: write the class, then add it to `EVALUATORS` (and its section to the base
config). Scores are ranked blockwise over the devices (`ranking`): no N x N
matrix is built.
"""

from __future__ import annotations

import json
import os

import jax
import ml_collections
import numpy as np

from pmrl_jax import losses as L
from pmrl_jax.configs import ConfigError
from pmrl_jax.evaluation.classification import Classification
from pmrl_jax.evaluation.context import EvalContext, Embedded, embed_split
from pmrl_jax.evaluation.rerank import Rerank
from pmrl_jax.evaluation.retrieval import Retrieval
from pmrl_jax.evaluation.robustness import Robustness
from pmrl_jax.workdir import write_atomically

EVALUATORS = {cls.name: cls for cls in (Retrieval, Rerank, Classification, Robustness)}
RESULTS_FILE = "results.json"

__all__ = ["EVALUATORS", "EvalContext", "Embedded", "check_evals", "embed_split", "evaluate", "format_results",
           "run_evaluators"]


def check_evals(config: ml_collections.ConfigDict) -> None:
    unknown = [name for name in config.evals if name not in EVALUATORS]
    if unknown:
        raise ConfigError(f"config.evals names {unknown}; known evaluators: {', '.join(EVALUATORS)}")
    if "rerank" in config.evals and not config.model.matching.enabled:
        raise ConfigError("config.evals has 'rerank', which needs the matching head (config.model.matching.enabled)")
    if config.eval.tile < 1:
        raise ConfigError(f"config.eval.tile={config.eval.tile} must be >= 1")
    for evaluator in EVALUATORS.values():  # every section, named or not: a bad one fails now, not later
        if hasattr(evaluator, "check"):
            evaluator.check(config)


def run_evaluators(context: EvalContext) -> dict:
    check_evals(context.config)
    return {name: EVALUATORS[name]().run(context) for name in context.config.evals}


def evaluate(trainer, state, workdir: str | None = None, selection: dict | None = None) -> dict:
    """Runs the evaluators of `trainer.config` (the run's resolved config) on its
    evaluation split; with a `workdir`, writes results.json there and, with
    `config.eval.plots`, the PNG plots (pmrl_jax.plots). `selection` (the model
    selection's record) says which step `state` is and why."""
    config = trainer.config
    context = EvalContext(config, trainer, state)
    results = {"split": config.data.eval_split, "num_examples": len(context.source()),
               "evals": run_evaluators(context)}
    if selection:
        results["selection"] = selection
    after = _sigma1_over_sqrt_k(context.embedded().embeddings)
    before = _sigma1_over_sqrt_k(EvalContext(config, trainer, trainer.init_state(), context.sources)
                                 .embedded().embeddings)
    results["sigma1_over_sqrt_k"] = {"before_training_mean": float(before.mean()), "mean": float(after.mean())}
    if workdir is not None and jax.process_index() == 0:
        if config.eval.plots:
            results["plots"] = _write_plots(config, workdir, results, before, after)
        write_atomically(os.path.join(workdir, RESULTS_FILE), json.dumps(results, indent=2))
    return results


def _sigma1_over_sqrt_k(embeddings: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(L.singular_values)(embeddings))[:, 0] / np.sqrt(embeddings.shape[1])


def _write_plots(config, workdir: str, results: dict, before: np.ndarray, after: np.ndarray) -> list[str]:
    from pmrl_jax import plots

    written = [plots.sigma1_histogram(before, after, os.path.join(workdir, "sigma1.png"))]
    evals = results["evals"]
    if "retrieval" in evals:
        table = evals["retrieval"]["any_to_any"]
        written.append(plots.retrieval_heatmap(
            table, list(config.data.modalities), os.path.join(workdir, "retrieval_r1.png"),
            f"{config.loss.name}: any-to-any R@1 ({evals['retrieval']['similarity']}), mean {table['mean']['R@1']:.3f}"))
    if "robustness" in evals:
        written.append(plots.robustness_plot({config.loss.name: evals["robustness"]},
                                             os.path.join(workdir, "robustness.png")))
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        written.append(plots.training_curves(os.path.join(workdir, "metrics.jsonl"),
                                             os.path.join(workdir, "training.png")))
    return [os.path.basename(path) for path in written]


def format_results(results: dict) -> str:
    """The printed form of `evaluate`'s results: one table per evaluator."""
    parts = [f"{results['split']} split, {results['num_examples']} examples"]
    selection = results.get("selection")
    if selection and selection.get("best_step") is not None:
        parts[0] += (f"; the model of step {selection['best_step']}, chosen by mean validation R@1 "
                     f"({selection['best_score']:.3f})")
    parts += [EVALUATORS[name]().summary(result) for name, result in results["evals"].items()]
    sigma = results["sigma1_over_sqrt_k"]
    parts.append(f"sigma_1 / sqrt(k), mean over instances: {sigma['before_training_mean']:.3f} before training, "
                 f"{sigma['mean']:.3f} now (1 = every modality aligned)")
    return "\n\n".join(parts)
