"""Anchored InfoNCE (ImageBind / LanguageBind style): the sum over the other modalities m
of InfoNCE(anchor, m), learnable temperature. The anchor is the data's first modality
(`pix` on the embedded data) unless `--config.loss.anchor` names one."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.loss.name = "clip"
    return finalize(config, arg)
