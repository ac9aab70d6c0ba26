"""The optimizer of `config.optimizer`: AdamW with linear warmup then cosine or linear
decay to 0 at `config.num_steps`, weight decay on matrices only, and clipping of the
global gradient norm."""

from __future__ import annotations

import jax
import ml_collections
import optax

from pmrl_jax.configs import ConfigError


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    opt = config.optimizer
    warmup = min(opt.warmup_steps, config.num_steps)
    decay_steps = max(config.num_steps - warmup, 1)
    if opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(opt.learning_rate, decay_steps)
    elif opt.decay == "linear":
        decay = optax.linear_schedule(opt.learning_rate, 0.0, decay_steps)
    else:
        raise ConfigError(f"config.optimizer.decay={opt.decay!r}; expected 'cosine' or 'linear'")
    return optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, warmup), decay], [warmup])


def decay_mask(params):
    """Weight decay on matrices only: biases, norm scales and the temperature are exempt."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    opt = config.optimizer
    adamw = optax.adamw(learning_rate_schedule(config), b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                        mask=decay_mask)
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw) if opt.grad_clip_norm else adamw
