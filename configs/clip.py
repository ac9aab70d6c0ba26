"""Anchored InfoNCE (ImageBind / LanguageBind style): sum over m of InfoNCE(anchor, m),
learnable temperature. The anchor is `pix` (index 4), the strongest view of the embedded
data."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.loss.name = "clip"
    config.loss.anchor = 4
    return finalize(config, arg)
