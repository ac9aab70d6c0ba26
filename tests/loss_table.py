"""Every batch loss of the library as a function of one `[B, k, d]` array, with the
naive reference it must equal and the k it accepts. Shared by the loss, sharding and
no-hang tests."""

import itertools

import jax.numpy as jnp

import naive
from pmrl_jax import losses as L

TAU = 0.07

LOSSES = {
    "gram": (
        lambda x: L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=TAU),
        lambda x: naive.gram_loss(x[:, 0], x[:, 1:], TAU, 0.1),
        range(2, 9),
    ),
    "pmrl_alignment": (
        lambda x: L.pmrl_alignment_loss(x, temperature=0.05),
        lambda x: naive.pmrl_alignment(x, 0.05),
        range(2, 9),
    ),
    "pmrl_regularization": (
        lambda x: L.pmrl_regularization_loss(x, temperature=0.1),
        lambda x: naive.pmrl_regularization(x, 0.1),
        range(2, 9),
    ),
    "pmrl": (
        lambda x: L.pmrl_loss(x, regularization_weight=0.5),
        lambda x: naive.pmrl_alignment(x, 0.05) + 0.5 * naive.pmrl_regularization(x, 0.1),
        range(2, 9),
    ),
    "infonce": (
        lambda x: L.infonce_loss(x[:, 0], x[:, 1], temperature=TAU, label_smoothing=0.1),
        lambda x: naive.infonce(x[:, 0], x[:, 1], TAU, 0.1),
        range(2, 9),
    ),
    "anchored_infonce": (
        lambda x: L.anchored_infonce_loss(x, temperature=TAU, anchor=1),
        lambda x: sum(naive.infonce(x[:, 1], x[:, m], TAU) for m in range(x.shape[1]) if m != 1),
        range(2, 9),
    ),
    "all_pairs_infonce": (
        lambda x: L.all_pairs_infonce_loss(x, temperature=TAU),
        lambda x: jnp.mean(jnp.stack([naive.infonce(x[:, m], x[:, n], TAU)
                                      for m, n in itertools.combinations(range(x.shape[1]), 2)])),
        range(2, 9),
    ),
    "symile": (
        lambda x: L.symile_loss(x, temperature=TAU),
        lambda x: naive.symile(x, TAU),
        range(2, 9),
    ),
    "triangle": (
        lambda x: L.triangle_contrastive_loss(x[:, 0], x[:, 1:], temperature=TAU),
        lambda x: naive.symmetric_ce(-naive.triangle_score(x[:, 0], x[:, 1:]) / TAU, 0.1),
        range(3, 4),
    ),
}


def default_k(name):
    ks = LOSSES[name][2]
    return 3 if 3 in ks else ks[0]


def objective_loss(name, z, anchor, temperature, label_smoothing, pmrl):
    """What the training objective `name` must compute on embeddings `z` [B, k, d]: the
    library loss called directly with the anchor's index, the temperature, the smoothing
    and PMRL's options (`pmrl`: alignment_temperature, regularization_temperature,
    regularization_weight)."""
    others = z[:, [m for m in range(z.shape[1]) if m != anchor]]
    return {
        "clip": lambda: L.anchored_infonce_loss(z, temperature=temperature, anchor=anchor),
        "all_pairs": lambda: L.all_pairs_infonce_loss(z, temperature=temperature),
        "gram": lambda: L.gram_contrastive_loss(z[:, anchor], others, temperature=temperature,
                                                label_smoothing=label_smoothing),
        "pmrl": lambda: L.pmrl_loss(z, **pmrl),
        "symile": lambda: L.symile_loss(z, temperature=temperature),
        "triangle": lambda: L.triangle_contrastive_loss(z[:, anchor], others, temperature=temperature,
                                                        label_smoothing=label_smoothing),
    }[name]()
