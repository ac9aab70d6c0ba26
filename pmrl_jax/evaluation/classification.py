"""Zero-shot classification by class prototypes: the mean training embedding of each
class, per modality, and (`config.eval.classification.descriptions`) one embedded input per class
(e.g. the token ids of "a photo of a <class>"); top-1 / top-5 accuracy."""

from __future__ import annotations

import os

import numpy as np

from pmrl_jax.configs import ConfigError
from pmrl_jax.data.pipeline import ArraySource, read_batch
from pmrl_jax.evaluation.context import EvalContext, Embedded, embed_split
from pmrl_jax.evaluation.metrics import mean_row, top_k_accuracy


class Classification:
    name = "classification"

    @staticmethod
    def check(config) -> None:
        section = config.eval.classification
        if section.descriptions and section.description_modality not in config.data.modalities:
            raise ConfigError(f"config.eval.classification.description_modality={section.description_modality!r} "
                              f"is not one of {list(config.data.modalities)}")

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
        result["per_modality"]["mean"] = mean_row(result["per_modality"])
        if context.config.eval.classification.descriptions:
            result["by_description"] = self.by_description(context, test, classes)
        return result

    def by_description(self, context: EvalContext, test: Embedded, classes: np.ndarray) -> dict:
        """Zero-shot with one embedded input per class of
        `config.eval.classification.description_modality` as the prototypes that every modality's
        test embeddings are matched against."""
        config, modalities = context.config, context.modalities
        modality, path = config.eval.classification.description_modality, config.eval.classification.descriptions
        if not os.path.exists(path):
            raise FileNotFoundError(f"config.eval.classification.descriptions={path!r}: no such file")
        inputs = np.load(path)
        template = read_batch(context.source(), np.zeros(1, np.int64))
        if inputs.shape != (len(classes),) + template[modality].shape[1:]:
            raise ConfigError(f"config.eval.classification.descriptions={path!r} holds {inputs.shape}; expected one "
                              f"{modality!r} input per class: {(len(classes),) + template[modality].shape[1:]}")
        arrays = {m: np.zeros((len(classes),) + template[m].shape[1:], template[m].dtype) for m in modalities}
        arrays[modality] = inputs.astype(template[modality].dtype)
        described = embed_split(context.trainer, context.state, ArraySource(arrays),
                                batch_size=config.data.eval_batch_size).embeddings[:, modalities.index(modality)]
        targets = np.searchsorted(classes, test.labels)
        result = {name: top_k_accuracy(test.embeddings[:, m] @ described.T, targets, classes)
                  for m, name in enumerate(modalities)}
        result["mean"] = mean_row(result)
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
