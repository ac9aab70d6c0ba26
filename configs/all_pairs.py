"""All-pairs InfoNCE: the mean of InfoNCE over every unordered pair of modalities, no
anchor; learnable temperature."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.loss.name = "all_pairs"
    return finalize(config, arg)
