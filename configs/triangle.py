"""TRIANGLE (NeurIPS 2025), k = 3: logits are minus the authors' squared-area score of
the triangle (anchor_i, m1_j, m2_j) over a learnable temperature, label smoothing 0.1.
The loss takes three modalities: the anchor and the data's next two (on the embedded
data: pix, fac and kar). docs/math.md, section "TRIANGLE"."""

from pmrl_jax.configs import finalize, get_base_config


def get_config(arg=None):
    config = get_base_config()
    config.loss.name = "triangle"
    config.loss.label_smoothing = 0.1
    return finalize(config, arg)
