"""PMRL (Liu, Xia, Ng, Chua, 2025): the leading singular value of each instance's [k, d]
embedding matrix as the logit of a softmax over its singular values (tau1 = 0.05), plus
the instance-wise repulsion of the sign-fixed leading directions over the global batch
(tau2 = 0.1), plus the instance matching head (weight 0.1).

As in the paper, the final stage continues from an InfoNCE-pretrained model: the first
`warm_start.steps` steps train with anchored InfoNCE, the rest with PMRL's objective.
docs/math.md, section "PMRL"."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.loss.name = "pmrl"
    config.loss.pmrl.alignment_temperature = 0.05
    config.loss.pmrl.regularization_temperature = 0.1
    config.loss.pmrl.regularization_weight = 1.0
    config.model.matching.enabled = True   # anchored on config.loss.anchor
    config.warm_start.loss = "clip"
    config.warm_start.steps = 1400
    config.evals = config.evals + ("rerank",)
    return finalize(config, arg)
