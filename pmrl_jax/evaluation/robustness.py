"""Robustness: mean any-to-any R@1/5/10 with Gaussian noise of each level in
`config.eval.robustness.noise_levels` added to every feature-vector input, the level a multiple of
each feature's standard deviation on the train split (PMRL's noise study)."""

from __future__ import annotations


from pmrl_jax.configs import ConfigError
from pmrl_jax.evaluation.context import EvalContext
from pmrl_jax.evaluation.retrieval import any_to_any

RECALLS = ("R@1", "R@5", "R@10")


class Robustness:
    name = "robustness"

    @staticmethod
    def check(config) -> None:
        levels = config.eval.robustness.noise_levels
        if any(level < 0 for level in levels):
            raise ConfigError(f"config.eval.robustness.noise_levels={tuple(levels)}: expected levels >= 0")

    def run(self, context: EvalContext) -> dict:
        config = context.config
        curve = {"levels": [float(x) for x in config.eval.robustness.noise_levels], "similarity": config.eval.similarity,
                 **{key: [] for key in RECALLS}}
        for level in curve["levels"]:
            z = context.embedded(noise=level).embeddings
            mean = any_to_any(context.ranks, z, context.modalities, config.eval.similarity)["mean"]
            for key in RECALLS:
                curve[key].append(mean[key])
        return curve

    def summary(self, result: dict) -> str:
        lines = ["robustness: mean any-to-any recall with noise of std level x (each feature's train std) added",
                 f"{'level':>6s} {'R@1':>7s} {'R@5':>7s} {'R@10':>7s}"]
        lines += [f"{level:6.2f} {r1:7.3f} {r5:7.3f} {r10:7.3f}"
                  for level, r1, r5, r10 in zip(result["levels"], result["R@1"], result["R@5"], result["R@10"],
                                                strict=True)]
        return "\n".join(lines)


