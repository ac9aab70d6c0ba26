"""The losses the training job knows by name (`config.loss.name`, `config.warm_start.loss`).

An objective turns the model's embeddings `[B, k, d]` (rows in `config.data.modalities`
order) and its temperature into a scalar, reading its hyperparameters from `config.loss`;
and hands on, by measure name, the `[B, B]` score matrices it formed on the way (GRAM:
its volumes), so that the matching head's hard negatives do not compute them again.
Each entry names the library function it calls and, where one exists, that function's
memory-bounded form in `pmrl_jax.losses.blocked` (used with `config.loss.blocked`).

Adding a loss: write it in `pmrl_jax.losses` (and, if it can be blocked, in
`pmrl_jax.losses.blocked`), then add one `Objective` to `OBJECTIVES`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from pmrl_jax import losses as L
from pmrl_jax.configs import ConfigError
from pmrl_jax.losses import blocked as LB


def split_anchor(z: jax.Array, anchor: int) -> tuple[jax.Array, jax.Array]:
    """`[B, k, d]` -> (the anchor's rows `[B, d]`, the other modalities `[B, k - 1, d]`)."""
    others = [m for m in range(z.shape[1]) if m != anchor]
    return z[:, anchor], z[:, jnp.asarray(others)]


def anchor_index(config: ml_collections.ConfigDict) -> int:
    """Position of `config.loss.anchor` (a modality name) in `config.data.modalities`."""
    modalities = list(config.data.modalities)
    if config.loss.anchor not in modalities:
        raise ConfigError(f"config.loss.anchor={config.loss.anchor!r} is not one of config.data.modalities "
                          f"{modalities}")
    return modalities.index(config.loss.anchor)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the objectives read from the config: the anchor's index, `config.loss`, and
    the number of devices the batch is split over (PMRL's device-scope regulariser)."""

    anchor: int
    loss: ml_collections.ConfigDict
    devices: int = 1


def _clip(loss, z, temperature, s: Settings):
    return loss(z, temperature=temperature, anchor=s.anchor)


def _infonce(loss, z, temperature, s: Settings):
    return loss(z[:, 0], z[:, 1], temperature=temperature, label_smoothing=s.loss.label_smoothing)


def _all_pairs(loss, z, temperature, s: Settings):
    return loss(z, temperature=temperature)


def _anchor_against_others(loss, z, temperature, s: Settings):
    anchor, others = split_anchor(z, s.anchor)
    return loss(anchor, others, temperature=temperature, label_smoothing=s.loss.label_smoothing)


def _gram(loss, z, temperature, s: Settings):
    anchor, others = split_anchor(z, s.anchor)
    if loss is L.gram_contrastive_loss:  # the blocked form never holds the [B, B] volumes
        value, volumes = loss(anchor, others, temperature=temperature, label_smoothing=s.loss.label_smoothing,
                              return_volumes=True, logits=s.loss.gram.volume_logits)
        return value, {"volume": -volumes}
    return loss(anchor, others, temperature=temperature, label_smoothing=s.loss.label_smoothing)


def _pmrl(loss, z, temperature, s: Settings):
    del temperature  # PMRL's two temperatures are fixed hyperparameters, not the model's
    pmrl = s.loss.pmrl
    options = dict(alignment_temperature=pmrl.alignment_temperature,
                   regularization_temperature=pmrl.regularization_temperature,
                   regularization_weight=pmrl.regularization_weight)
    if pmrl.regularization_scope == "device":
        # Each device's rows repel among themselves: local, so the plain loss is bounded
        # in memory too (blocked or not).
        return L.pmrl_loss(z, regularization_groups=s.devices, **options)
    return loss(z, **options)


def _symile(loss, z, temperature, s: Settings):
    return loss(z, temperature=temperature)


@dataclasses.dataclass(frozen=True)
class Objective:
    """`call(loss, z, temperature, settings)` applies `loss`, the plain function or its
    blocked form, to the embeddings."""

    plain: Callable
    blocked: Callable | None
    call: Callable
    min_modalities: int
    max_modalities: int | None = None
    description: str = ""


OBJECTIVES: dict[str, Objective] = {
    "clip": Objective(L.anchored_infonce_loss, LB.blocked_anchored_infonce_loss, _clip, 2,
                      description="anchored InfoNCE (ImageBind / LanguageBind): the anchor against each other modality"),
    "infonce": Objective(L.infonce_loss, LB.blocked_infonce_loss, _infonce, 2, 2, description="CLIP, two modalities"),
    "all_pairs": Objective(L.all_pairs_infonce_loss, None, _all_pairs, 2,
                           description="InfoNCE over every pair of modalities"),
    "gram": Objective(L.gram_contrastive_loss, LB.blocked_gram_contrastive_loss, _gram, 2,
                      description="GRAM: volume InfoNCE, the anchor against the set of the others"),
    "pmrl": Objective(L.pmrl_loss, LB.blocked_pmrl_loss, _pmrl, 2,
                      description="PMRL: leading singular value + leading-direction repulsion"),
    "symile": Objective(L.symile_loss, LB.blocked_symile_loss, _symile, 2,
                        description="Symile: multilinear inner product"),
    "triangle": Objective(L.triangle_contrastive_loss, LB.blocked_triangle_contrastive_loss,
                          _anchor_against_others, 3, 3, description="TRIANGLE: area InfoNCE, k = 3"),
}


def check_objective(name: str, num_modalities: int, field: str = "config.loss.name") -> Objective:
    """The objective called `name`, or a ConfigError naming `field` when there is none or
    it cannot take `num_modalities` modalities."""
    if name not in OBJECTIVES:
        raise ConfigError(f"{field}={name!r} is not a known loss; known: {', '.join(OBJECTIVES)}")
    objective = OBJECTIVES[name]
    low, high = objective.min_modalities, objective.max_modalities
    if num_modalities < low or (high and num_modalities > high):
        wanted = low if high == low else f">= {low}"
        raise ConfigError(f"{field}={name!r} needs k = {wanted} modalities; config.data.modalities has "
                          f"{num_modalities}")
    return objective


def objective_fn(name: str, config: ml_collections.ConfigDict,
                 devices: int = 1) -> Callable[[jax.Array, jax.Array], tuple[jax.Array, dict]]:
    """`(z [B, k, d], temperature) -> (scalar, {measure: [B, B] scores})` for the loss
    `name` under `config`, blocked when `config.loss.blocked` is set; `devices`: those the
    batch is split over. The scores (higher = more similar, no derivative) are those the
    loss formed anyway; most losses hand on none."""
    objective = OBJECTIVES[name]
    loss = objective.blocked if config.loss.blocked else objective.plain
    if loss is None:
        raise ConfigError(f"config.loss.blocked=True, but the loss {name!r} has no blocked form; blocked: "
                          f"{', '.join(n for n, o in OBJECTIVES.items() if o.blocked)}")
    call = functools.partial(objective.call, loss, s=Settings(anchor_index(config), config.loss, devices))

    def value_and_scores(z, temperature):
        out = call(z, temperature)
        return out if isinstance(out, tuple) else (out, {})

    return value_and_scores
