"""GRAM (Cicchetti et al., ICLR 2025): symmetric volume InfoNCE with the anchor against
the set of the other modalities, label smoothing 0.1, learnable temperature (0.07 at
start), and the data-anchor matching head (weight 0.1) with hard negatives drawn from -V.

As in the paper, the final stage continues from an InfoNCE-pretrained model: the first
`warm_start.steps` steps train with anchored InfoNCE, the rest with GRAM's objective.
docs/math.md, section "GRAM"."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.loss.name = "gram"
    config.loss.label_smoothing = 0.1
    config.loss.similarity = "volume"
    config.model.matching.enabled = True
    config.warm_start.loss = "clip"
    config.warm_start.steps = 1400
    config.evals = config.evals + ("rerank",)
    return finalize(config, arg)
