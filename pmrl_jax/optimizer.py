"""The optimizer of `config.optimizer`: AdamW with linear warmup then cosine or linear
decay to 0 at `config.num_steps`, weight decay on matrices only, and clipping of the
global gradient norm.

A pretrained encoder (`config.model.encoders.<m>`, kind `pretrained_text`) may be locked
(`trainable: False`: its weights get no update and no optimizer state) or trained at
`learning_rate_multiplier` times the schedule."""

from __future__ import annotations

import jax
import ml_collections
import optax

from pmrl_jax.configs import ConfigError, encoder_options

_DEFAULT, _LOCKED = "default", "locked"


def learning_rate_schedule(config: ml_collections.ConfigDict, multiplier: float = 1.0) -> optax.Schedule:
    opt = config.optimizer
    peak = opt.learning_rate * multiplier
    warmup = min(opt.warmup_steps, config.num_steps)
    decay_steps = max(config.num_steps - warmup, 1)
    if opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps)
    elif opt.decay == "linear":
        decay = optax.linear_schedule(peak, 0.0, decay_steps)
    else:
        raise ConfigError(f"config.optimizer.decay={opt.decay!r}; expected 'cosine' or 'linear'")
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def decay_mask(params):
    """Weight decay on matrices only: biases, norm scales and the temperature are exempt."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def encoder_groups(config: ml_collections.ConfigDict) -> dict[str, object]:
    """{modality: "locked" or its learning-rate multiplier} for the encoders that are not
    trained like the rest of the model."""
    groups = {}
    for modality, options in encoder_options(config).items():
        if options.get("trainable", True) is False:
            groups[modality] = _LOCKED
        elif options.get("learning_rate_multiplier", 1.0) != 1.0:
            groups[modality] = float(options["learning_rate_multiplier"])
    return groups


def _label_parameters(groups: dict[str, object]):
    """params -> the same tree of labels: a parameter under `encoders/<modality>` of a
    group gets that group's label, every other one "default"."""

    def label(path, _):
        keys = [getattr(key, "key", getattr(key, "name", key)) for key in path]
        if len(keys) >= 2 and keys[0] == "encoders" and keys[1] in groups:
            group = groups[keys[1]]
            return _LOCKED if group == _LOCKED else f"encoder:{keys[1]}"
        return _DEFAULT

    return lambda params: jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    opt = config.optimizer

    def adamw(multiplier=1.0):
        return optax.adamw(learning_rate_schedule(config, multiplier), b1=opt.b1, b2=opt.b2,
                           weight_decay=opt.weight_decay, mask=decay_mask)

    groups = encoder_groups(config)
    if not groups:
        update = adamw()
    else:
        transforms = {_DEFAULT: adamw(), _LOCKED: optax.set_to_zero()}
        transforms |= {f"encoder:{m}": adamw(g) for m, g in groups.items() if g != _LOCKED}
        update = optax.multi_transform(transforms, _label_parameters(groups))
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), update) if opt.grad_clip_norm else update
