"""Symile (Saporta et al., NeurIPS 2024): cross-entropy over the multilinear inner product
sum_d prod_m x_m[d], each modality in turn scored against candidates built from the
others; learnable temperature. docs/math.md, section "Symile"."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.loss.name = "symile"
    return finalize(config, arg)
