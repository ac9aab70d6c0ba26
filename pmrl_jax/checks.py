"""The checks that reject a resolved config before anything is compiled or written: a
`ConfigError` whose message names the field."""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import ml_collections

from pmrl_jax import losses as L
from pmrl_jax.configs import ConfigError
from pmrl_jax.objectives import OBJECTIVES, check_objective

DTYPES = ("float32", "bfloat16")

# Numeric fields and the range each must lie in: (lowest allowed, first excluded or None).
FIELD_BOUNDS = {
    "num_steps": (1, None),
    "log_every": (1, None),
    "checkpoint_every": (1, None),
    "max_checkpoints": (1, None),
    "data.batch_size": (1, None),
    "data.eval_batch_size": (1, None),
    "data.prefetch_threads": (0, None),
    "data.gaussian_noise": (0, None),
    "data.modality_dropout": (0, 1),
    "model.width": (1, None),
    "model.embed_dim": (1, None),
    "model.matching.weight": (0, None),
    "loss.label_smoothing": (0, 1),
    "loss.pmrl.regularization_weight": (0, None),
    "warm_start.steps": (0, None),
    "optimizer.warmup_steps": (0, None),
    "optimizer.weight_decay": (0, None),
    "optimizer.b1": (0, 1),
    "optimizer.b2": (0, 1),
    "optimizer.grad_clip_norm": (0, None),
    "eval.every": (0, None),
    "eval.patience": (0, None),
}


def _check_bounds(config: ml_collections.ConfigDict) -> None:
    for path, (lowest, excluded) in FIELD_BOUNDS.items():
        value = functools.reduce(getattr, path.split("."), config)
        if not (lowest <= value and (excluded is None or value < excluded)):  # NaN fails too
            expected = f">= {lowest}" if excluded is None else f"in [{lowest}, {excluded})"
            raise ConfigError(f"config.{path} must be {expected}; got {value}")
    if not config.optimizer.learning_rate > 0:
        raise ConfigError(f"config.optimizer.learning_rate must be > 0; got {config.optimizer.learning_rate}")


def _check_modalities(config: ml_collections.ConfigDict, example_shapes: Mapping[str, tuple[int, ...]]) -> None:
    modalities = list(config.data.modalities)
    if len(set(modalities)) != len(modalities):
        raise ConfigError(f"config.data.modalities has duplicates: {modalities}")
    missing = [m for m in modalities if m not in example_shapes]
    if missing:
        raise ConfigError(f"config.data.modalities names {missing}, which dataset {config.data.name!r} does not have; "
                          f"it has {sorted(example_shapes)}")
    if config.loss.anchor not in modalities:
        raise ConfigError(f"config.loss.anchor={config.loss.anchor!r} is not one of config.data.modalities {modalities}")
    unknown = [m for m in config.data.gaussian_noise_exclude if m not in example_shapes]
    if unknown:
        raise ConfigError(f"config.data.gaussian_noise_exclude names {unknown}, which dataset {config.data.name!r} "
                          f"does not have; it has {sorted(example_shapes)}")


def _check_losses(config: ml_collections.ConfigDict) -> None:
    k = len(config.data.modalities)
    check_objective(config.loss.name, k)
    if config.warm_start.loss:
        check_objective(config.warm_start.loss, k, "config.warm_start.loss")
    for field, name in (("config.loss.name", config.loss.name), ("config.warm_start.loss", config.warm_start.loss)):
        if config.loss.blocked and name and OBJECTIVES[name].blocked is None:
            raise ConfigError(f"config.loss.blocked=True, but {field}={name!r} has no blocked form; blocked: "
                              f"{', '.join(n for n, o in OBJECTIVES.items() if o.blocked)}")
    if config.loss.pmrl.regularization_scope not in ("global", "device"):
        raise ConfigError(f"config.loss.pmrl.regularization_scope={config.loss.pmrl.regularization_scope!r}; expected "
                          f"'global' or 'device'")
    logits = config.loss.gram.volume_logits
    if logits not in L.GRAM_LOGITS:
        raise ConfigError(f"config.loss.gram.volume_logits={logits!r}; expected one of {L.GRAM_LOGITS}")
    if logits != "volume" and config.loss.blocked and "gram" in (config.loss.name, config.warm_start.loss):
        raise ConfigError(f"config.loss.gram.volume_logits={logits!r} has no blocked form; "
                          f"use it with config.loss.blocked=False")
    for field in ("alignment_temperature", "regularization_temperature"):
        if config.loss.pmrl[field] <= 0:
            raise ConfigError(f"config.loss.pmrl.{field} must be > 0; got {config.loss.pmrl[field]}")
    for field in ("loss.similarity", "eval.similarity"):
        value = functools.reduce(getattr, field.split("."), config)
        if value not in L.similarity_names():
            raise ConfigError(f"config.{field}={value!r}; known: {', '.join(L.similarity_names())}")
    unknown = [m for m in config.eval.retrieval.set_similarities if m not in L.similarity_names()]
    if unknown:
        raise ConfigError(f"config.eval.retrieval.set_similarities names {unknown}; known: "
                          f"{', '.join(L.similarity_names())}")


def _check_selection(config: ml_collections.ConfigDict) -> None:
    from pmrl_jax.evaluation.retrieval import parse_set_query

    if config.eval.select_query:
        parse_set_query(config.eval.select_query, list(config.data.modalities), "config.eval.select_query")
    if config.eval.select_similarity is not None and config.eval.select_similarity not in L.similarity_names():
        raise ConfigError(f"config.eval.select_similarity={config.eval.select_similarity!r}; known: "
                          f"{', '.join(L.similarity_names())}")


def validate(config: ml_collections.ConfigDict, example_shapes: Mapping[str, tuple[int, ...]],
             num_devices: int | None = None) -> None:
    """Rejects a bad (resolved) configuration before anything is compiled or written."""
    from pmrl_jax.evaluation import check_evals

    _check_bounds(config)
    _check_modalities(config, example_shapes)
    _check_losses(config)
    temperature = config.model.temperature
    if not 0 < temperature.minimum <= temperature.initial <= temperature.maximum:
        raise ConfigError("config.model.temperature needs 0 < minimum <= initial <= maximum; got "
                          f"{temperature.minimum}, {temperature.initial}, {temperature.maximum}")
    if config.model.dtype not in DTYPES:
        raise ConfigError(f"config.model.dtype={config.model.dtype!r}; known: {', '.join(DTYPES)}")
    check_evals(config)
    _check_selection(config)
    if config.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"config.nonfinite={config.nonfinite!r}; expected 'stop' or 'skip'")
    devices = jax.device_count() if num_devices is None else num_devices
    if config.data.batch_size % devices or config.data.eval_batch_size % devices:
        raise ConfigError(f"config.data.batch_size={config.data.batch_size} and config.data.eval_batch_size="
                          f"{config.data.eval_batch_size} must both be divisible by the {devices} devices")
    if config.data.batch_size % jax.process_count():
        raise ConfigError(f"config.data.batch_size={config.data.batch_size} is not divisible by the "
                          f"{jax.process_count()} processes")
