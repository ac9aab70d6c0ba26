"""The multimodal model: per modality an optional input standardisation, an encoder and
a projection into a shared L2-normalised space (an `adapter` encoder maps into that space
itself), a learnable temperature, and an optional matching head."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pmrl_jax.losses import l2_normalize
from pmrl_jax.models import encoders
from pmrl_jax.models.matching import MatchingHead

ENCODER_KINDS = ("adapter", "mlp", "transformer", "vit", "audio", "pretrained_text")


class InputStatistic(nnx.Variable):
    """A statistic of the training inputs: model state saved with the checkpoint, not a
    parameter."""


class Standardize(nnx.Module):
    """(x - mean) / std per feature, with the train split's statistics."""

    def __init__(self, mean, std):
        self.mean = InputStatistic(jnp.asarray(mean, jnp.float32))
        self.std = InputStatistic(jnp.asarray(std, jnp.float32))

    def __call__(self, x):
        return ((x - self.mean[...]) / self.std[...]).astype(x.dtype)


class Temperature(nnx.Module):
    """tau = exp(log_tau) clamped to [minimum, maximum]; log-parameterised so that Adam's
    steps are relative. A fixed temperature is a constant, not a parameter."""

    def __init__(self, initial: float, *, minimum: float, maximum: float, learnable: bool = True):
        if not 0 < minimum <= initial <= maximum:
            raise ValueError(f"temperature needs 0 < minimum <= initial <= maximum; got {minimum}, {initial}, {maximum}")
        self.minimum, self.maximum = minimum, maximum
        value = jnp.asarray(np.log(initial), jnp.float32)
        self.log_temperature = nnx.Param(value) if learnable else nnx.Variable(value)

    def __call__(self):
        return jnp.exp(jnp.clip(self.log_temperature[...], np.log(self.minimum), np.log(self.maximum)))


def build_encoder(kind: str, example_shape: tuple[int, ...], *, width: int, embed_dim: int, dtype, rngs: nnx.Rngs,
                  **options):
    """`example_shape` is one example's shape (no batch axis), used to size the input layer."""
    if kind == "adapter":
        if len(example_shape) != 1:
            raise ValueError(f"the adapter encoder takes feature vectors; an example has shape {example_shape}")
        return encoders.FeatureAdapter(example_shape[0], out_features=embed_dim, width=width, dtype=dtype, rngs=rngs,
                                       **options)
    if kind == "mlp":
        if len(example_shape) != 1:
            raise ValueError(f"the mlp encoder takes feature vectors; an example has shape {example_shape}")
        return encoders.MLPEncoder(example_shape[0], width=width, dtype=dtype, rngs=rngs, **options)
    if kind == "transformer":
        return encoders.TextTransformerEncoder(width=width, dtype=dtype, rngs=rngs, **options)
    if kind == "vit":
        image_shape = example_shape[-3:]
        if len(example_shape) not in (3, 4) or image_shape[0] != image_shape[1]:
            raise ValueError(f"the vit encoder takes square images [H, W, C] or video [F, H, W, C]; "
                             f"an example has shape {example_shape}")
        return encoders.ViTEncoder(image_shape[0], image_shape[2], width=width, dtype=dtype, rngs=rngs, **options)
    if kind == "audio":
        if len(example_shape) != 2:
            raise ValueError(f"the audio encoder takes spectrograms [frames, mel_bins]; an example has shape "
                             f"{example_shape}")
        return encoders.AudioEncoder(*example_shape, width=width, dtype=dtype, rngs=rngs, **options)
    if kind == "pretrained_text":
        return _pretrained_text_encoder(example_shape, dtype=dtype, **options)
    raise ValueError(f"unknown encoder kind {kind!r}; known: {', '.join(ENCODER_KINDS)}")


def _pretrained_text_encoder(example_shape, *, path: str | None = None, trainable: bool = True,
                             learning_rate_multiplier: float = 1.0, max_length: int | None = None,
                             dropout: float = 0.0, depth=None, dtype):
    """A BERT-family tower from a local checkpoint (pmrl_jax.models.pretrained).
    `trainable` and `learning_rate_multiplier` are read by the optimizer
    (`pmrl_jax.optimizer`) and the model (`MultimodalModel.encode`); `depth` is the
    shared default encoder's option and does not apply."""
    from pmrl_jax.models.pretrained import load_text_encoder

    del depth
    if not path:
        raise ValueError("a pretrained_text encoder needs a path (a checkpoint directory)")
    if not isinstance(trainable, bool) or not learning_rate_multiplier > 0:
        raise ValueError(f"pretrained_text needs trainable True or False and learning_rate_multiplier > 0; got "
                         f"{trainable!r}, {learning_rate_multiplier!r}")
    if len(example_shape) != 1:
        raise ValueError(f"the pretrained_text encoder takes token ids [tokens]; an example has shape {example_shape}")
    encoder, _ = load_text_encoder(path, dtype=dtype, dropout=dropout, max_length=max_length)
    encoder.trainable = trainable
    return encoder


class MultimodalModel(nnx.Module):
    """`statistics` {modality: (mean, std)} standardises those (feature-vector)
    modalities inside the model; zeros and ones stand in where the values are to be
    restored from a checkpoint."""

    def __init__(self, modalities: Sequence[str], example_shapes: Mapping[str, tuple[int, ...]],
                 encoder_options: Mapping[str, Mapping], *, width: int, embed_dim: int, temperature: Mapping,
                 matching: Mapping | None, statistics: Mapping[str, tuple] | None = None, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.modalities = tuple(modalities)
        statistics = dict(statistics or {})
        self.standardize = nnx.Dict({name: Standardize(*statistics[name]) for name in self.modalities
                                     if name in statistics})
        self.encoders = nnx.Dict({
            name: build_encoder(example_shape=tuple(example_shapes[name]), width=width, embed_dim=embed_dim,
                                dtype=dtype, rngs=rngs, **dict(encoder_options[name]))
            for name in self.modalities
        })
        # An adapter maps into the shared space itself; every other encoder is projected
        # from its own width (`width`, or a pretrained tower's).
        projected = [name for name in self.modalities if encoder_options[name]["kind"] != "adapter"]
        token_widths = {name: getattr(self.encoders[name], "width", width) if name in projected else embed_dim
                        for name in self.modalities}
        # A pretrained tower's projection starts as an isometry (the identity when the
        # widths agree), so that training starts from the tower's own embeddings.
        pretrained = {name for name in projected if encoder_options[name]["kind"] == "pretrained_text"}
        self.projections = nnx.Dict({
            name: nnx.Linear(token_widths[name], embed_dim, use_bias=False, dtype=dtype, rngs=rngs,
                             **({"kernel_init": lambda key, shape, dtype: encoders.isometry(shape, dtype)}
                                if name in pretrained else {}))
            for name in projected})
        self.temperature = Temperature(**dict(temperature))
        if matching and len(set(token_widths.values())) > 1:
            raise ValueError(f"the matching head reads every modality's tokens, which need one width; the encoders "
                             f"give {token_widths} (width for projected encoders, embed_dim for adapters)")
        self.matching = (MatchingHead(next(iter(token_widths.values())), dtype=dtype, rngs=rngs, **dict(matching))
                         if matching else None)

    def __call__(self, batch: Mapping[str, jax.Array], *, rngs: nnx.Rngs | None = None):
        """`rngs` (with a `dropout` stream) turns dropout on; without it the model is
        deterministic. Returns (embeddings [B, k, embed_dim] float32 unit rows in `modalities` order,
        tokens {modality: [B, n, width]})."""
        tokens, embeddings = {}, []
        for name in self.modalities:
            tokens[name], pooled = self.encode(name, batch[name], rngs=rngs)
            embeddings.append(pooled)
        return l2_normalize(jnp.stack(embeddings, axis=1)), tokens

    def encode(self, name: str, x, *, rngs: nnx.Rngs | None = None):
        """One modality's (tokens [B, n, width], embedding [B, embed_dim] float32 before
        normalisation): standardised, encoded and projected."""
        x = self.standardize[name](x) if name in self.standardize else x
        tokens, pooled = self.encoders[name](x, rngs=rngs)
        if not getattr(self.encoders[name], "trainable", True):  # a locked tower: no backward pass through it
            tokens, pooled = jax.lax.stop_gradient(tokens), jax.lax.stop_gradient(pooled)
        if name in self.projections:
            pooled = self.projections[name](pooled)
        return tokens, pooled.astype(jnp.float32)
