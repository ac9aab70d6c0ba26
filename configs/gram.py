"""GRAM (Cicchetti et al., ICLR 2025): symmetric volume InfoNCE with the anchor `pix`
against the other views, label smoothing 0.1, learnable temperature (0.07 at start), and
the data-anchor matching head (weight 0.1) with hard negatives drawn from -V.

As in the paper, the final stage continues from an InfoNCE-pretrained model: the first
`warm_start.steps` steps train with anchored InfoNCE, the rest with GRAM's objective.
MATH.md section 2."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.loss.name = "gram"
    config.loss.anchor = 4
    config.loss.label_smoothing = 0.1
    config.loss.similarity = "volume"
    config.model.matching.enabled = True
    config.warm_start.loss = "clip"
    config.warm_start.steps = 1400
    config.evals = config.evals + ("rerank",)
    config.eval.set_queries = ("pix->fac+fou+kar+mor+zer", "fac+fou+kar+mor+zer->pix")
    config.eval.set_similarity = "volume"
    return finalize(config, arg)
