"""From a config as written to the config a run uses: the fields left None are decided
by the data and the loss, and the run's train split is opened once.

    prepared = prepare(config)
    prepared.config       # a copy with every None field decided (saved as config.json)
    prepared.train        # the train split's source
    prepared.shapes       # {modality: one example's shape}
    prepared.choices      # what was decided and why, for the run's first printed line

The decisions, in order:
  modalities       every modality of the dataset, in its order; when the loss takes
                   fewer (triangle: 3) or `data.num_modalities` asks for fewer, the anchor
                   and the first others
  anchor           the named one (`loss.anchor`), else the first modality
  set queries      the anchor against the first 1, 2, .. of the others, and all of
                   them against the anchor (k >= 3)
  dataset defaults the fields the dataset sets (`Dataset.defaults` in the registry)
  encoder kind     `mlp`
  embed_dim        the inputs' width when every modality is an `adapter` of inputs of
                   one width, else 128
  standardize      on for every encoder but `adapter`
  noise            none
Resolving a resolved config changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools

import ml_collections
import numpy as np

from pmrl_jax.configs import ConfigError, encoder_options
from pmrl_jax.data import registry

DEFAULT_EMBED_DIM = 128


@dataclasses.dataclass
class Prepared:
    config: ml_collections.ConfigDict
    train: object
    shapes: dict[str, tuple[int, ...]]
    choices: list[str]


def _get(config, path: str):
    return functools.reduce(lambda node, key: node[key], path.split("."), config)


def _set(config, path: str, value) -> None:
    *parents, key = path.split(".")
    functools.reduce(lambda node, k: node[k], parents, config)[key] = value


def _as_names(value, field: str) -> tuple[str, ...]:
    """A tuple of names; one comma-separated string ("a,b", as a shell gives it) is split."""
    if isinstance(value, str):
        value = (value,)
    names = tuple(part.strip() for item in value for part in str(item).split(",") if part.strip())
    if not names:
        raise ConfigError(f"{field} is empty")
    return names


def choose_modalities(config: ml_collections.ConfigDict, available: tuple[str, ...]) -> tuple[str, ...]:
    from pmrl_jax.objectives import OBJECTIVES

    if config.data.modalities is not None:
        modalities = _as_names(config.data.modalities, "config.data.modalities")
        unknown = [m for m in modalities if m not in available]
        if unknown:
            raise ConfigError(f"config.data.modalities names {unknown}, which dataset {config.data.name!r} does not "
                              f"have; it has {list(available)}")
        return modalities
    anchor = config.loss.anchor
    if anchor is not None and anchor not in available:
        raise ConfigError(f"config.loss.anchor={anchor!r} is not a modality of dataset {config.data.name!r}; it has "
                          f"{list(available)}")
    limits = [len(available)]
    if config.data.num_modalities is not None:
        limits.append(config.data.num_modalities)
    for loss in (config.loss.name, config.warm_start.loss):
        if loss in OBJECTIVES and OBJECTIVES[loss].max_modalities:
            limits.append(OBJECTIVES[loss].max_modalities)
    count = min(limits)
    if count >= len(available):
        return available
    anchor = anchor or available[0]
    return (anchor,) + tuple(m for m in available if m != anchor)[: count - 1]


def default_set_queries(modalities, anchor: str) -> tuple[str, ...]:
    """The anchor against the first 1, 2, .. of the other modalities, and all of them
    against the anchor (k >= 3)."""
    if len(modalities) < 3:
        return ()
    others = [m for m in modalities if m != anchor]
    growing = tuple(f"{anchor}->{'+'.join(others[:j])}" for j in range(1, len(others) + 1))
    return growing + (f"{'+'.join(others)}->{anchor}",)


def resolve(config: ml_collections.ConfigDict, shapes_of=None) -> tuple[ml_collections.ConfigDict, list[str]]:
    """(a copy of `config` with its None fields decided, notes on what was decided).
    `shapes_of(config) -> {modality: example shape}` gives the inputs' shapes for the
    width decisions (default: open the train split)."""
    config = ml_collections.ConfigDict(config.to_dict())
    choices = []
    spec = registry.dataset(config.data.name)
    options = registry.chosen_options(config.data.name, config.data.options.to_dict())
    available = spec.modalities(**options)

    given = config.data.modalities is not None
    config.data.modalities = choose_modalities(config, available)
    if not given:
        choices.append(f"modalities {list(config.data.modalities)} (of {list(available)})"
                       if len(config.data.modalities) < len(available) else
                       f"modalities {list(config.data.modalities)} (all the data has)")
    if config.loss.anchor is None:
        config.loss.anchor = config.data.modalities[0]
        choices.append(f"anchor {config.loss.anchor!r} (the first modality)")
    elif config.loss.anchor not in config.data.modalities:
        raise ConfigError(f"config.loss.anchor={config.loss.anchor!r} is not one of config.data.modalities "
                          f"{list(config.data.modalities)}")
    if config.eval.retrieval.set_queries is None:
        config.eval.retrieval.set_queries = default_set_queries(config.data.modalities, config.loss.anchor)
        if config.eval.retrieval.set_queries:
            choices.append(f"set queries {list(config.eval.retrieval.set_queries)}")

    defaulted = [path for path, value in spec.defaults.items() if _get(config, path) is None]
    for path in defaulted:
        _set(config, path, spec.defaults[path])
    if config.model.encoder.kind is None:
        config.model.encoder.kind = "mlp"
    if config.data.gaussian_noise is None:
        config.data.gaussian_noise = 0.0
    excluded = _as_names(config.data.gaussian_noise_exclude, "") if config.data.gaussian_noise_exclude else ()
    unknown = [m for m in excluded if m not in available]
    if unknown:
        raise ConfigError(f"config.data.gaussian_noise_exclude names {unknown}, which dataset {config.data.name!r} "
                          f"does not have; it has {list(available)}")
    config.data.gaussian_noise_exclude = tuple(m for m in excluded if m in config.data.modalities)
    for path in defaulted:
        value = _get(config, path)
        if (value or path == "data.gaussian_noise") and path not in ("model.encoder.kind", "model.standardize"):
            choices.append(f"{path.rsplit('.', 1)[-1]} {value!r} ({config.data.name}'s default)")

    kinds = {m: (config.model.encoders[m].get("kind") if m in config.model.encoders else None)
             or config.model.encoder.kind for m in config.data.modalities}
    if config.model.standardize is None:
        config.model.standardize = any(kind != "adapter" for kind in kinds.values())
    if config.model.embed_dim is None:
        shapes = (shapes_of or example_shapes_of_config)(config)
        widths = {shapes[m][-1] for m in config.data.modalities if len(shapes[m]) == 1}
        adapters_only = all(kind == "adapter" for kind in kinds.values())
        config.model.embed_dim = widths.pop() if adapters_only and len(widths) == 1 else DEFAULT_EMBED_DIM
        inputs_width = adapters_only and config.model.embed_dim != DEFAULT_EMBED_DIM
        choices.append(f"embed_dim {config.model.embed_dim}{' (the width of the inputs)' if inputs_width else ''}")
    if len(set(kinds.values())) == 1:
        choices.append(f"encoder {next(iter(kinds.values()))}")
    else:
        choices.append(f"encoders {kinds}")
    return config, choices


@functools.lru_cache(maxsize=16)
def _tokenizer(path: str, max_length: int | None):
    from pmrl_jax.models.pretrained import load_tokenizer

    return load_tokenizer(path, max_length=max_length)


def text_tokenizers(config: ml_collections.ConfigDict) -> dict:
    """{modality: its tokenizer} for the modalities whose encoder is `pretrained_text`."""
    tokenizers = {}
    for modality, options in encoder_options(config).items():
        if options.get("kind") != "pretrained_text":
            continue
        field = f"config.model.encoders.{modality}"
        if not options.get("path"):
            raise ConfigError(f"{field}.path is not set: a pretrained_text encoder loads a checkpoint directory")
        try:
            tokenizers[modality] = _tokenizer(str(options["path"]), options.get("max_length"))
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"{field}: {error}") from None
    return tokenizers


def open_split(config: ml_collections.ConfigDict, split: str):
    """Split `split` of the config's dataset with its (resolved) modalities; raw-text
    modalities come out as token ids of their encoder's tokenizer."""
    source = registry.make_source(config.data.name, split, tuple(config.data.modalities),
                                  **config.data.options.to_dict())
    texts = tuple(getattr(source, "texts", {}))
    tokenizers = text_tokenizers(config)
    untokenized = [m for m in texts if m not in tokenizers]
    if untokenized:
        raise ConfigError(f"modality {untokenized[0]!r} is raw text: give it a text encoder, "
                          f"config.model.encoders.{untokenized[0]} = {{kind: 'pretrained_text', path: ...}}")
    if not texts:
        return source
    from pmrl_jax.data.text import TokenizedSource

    return TokenizedSource(source, {m: tokenizers[m] for m in texts})


def input_layout(source) -> dict[str, dict]:
    """{modality: {"shape": one example's shape, "dtype": its dtype}} of a source."""
    from pmrl_jax.data.pipeline import read_batch

    return {k: {"shape": list(v.shape[1:]), "dtype": str(v.dtype)}
            for k, v in read_batch(source, np.zeros(1, np.int64)).items() if k not in ("index", "label")}


def example_shapes_of(source) -> dict[str, tuple[int, ...]]:
    from pmrl_jax.data.pipeline import read_batch

    return {k: tuple(v.shape[1:]) for k, v in read_batch(source, np.zeros(1, np.int64)).items()
            if k not in ("index", "label")}


def example_shapes_of_config(config: ml_collections.ConfigDict) -> dict[str, tuple[int, ...]]:
    return example_shapes_of(open_split(config, "train"))


def prepare(config: ml_collections.ConfigDict) -> Prepared:
    """Resolves `config` and opens its train split (once)."""
    opened = {}

    def shapes_of(resolved):
        opened["train"] = open_split(resolved, "train")
        return example_shapes_of(opened["train"])

    resolved, choices = resolve(config, shapes_of)
    train = opened.get("train") or open_split(resolved, "train")
    return Prepared(resolved, train, example_shapes_of(train), choices)
