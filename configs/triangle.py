"""TRIANGLE (NeurIPS 2025), k = 3: logits are minus the authors' squared-area score of
the triangle (anchor_i, m1_j, m2_j) over a learnable temperature, label smoothing 0.1.
Three views of the embedded data: pix (the anchor), fac and kar. MATH.md section 4."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.data.modalities = ("pix", "fac", "kar")
    config.loss.name = "triangle"
    config.loss.anchor = 0
    config.loss.label_smoothing = 0.1
    return finalize(config, arg)
