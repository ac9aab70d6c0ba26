"""The losses by name: what each objective computes from the config, checked against the
library functions called directly."""

import jax
import numpy as np
import pytest

from configs_util import load_config
from loss_table import objective_loss
from pmrl_jax import losses as L
from pmrl_jax import sharding
from pmrl_jax.objectives import OBJECTIVES, objective_fn
from pmrl_jax.resolve import resolve

UCI_SHAPES = {"fac": (216,), "fou": (76,), "kar": (64,), "mor": (6,), "pix": (240,), "zer": (47,)}


def _resolved(name, pmrl=None, **loss):
    config = load_config(name)
    for key, value in loss.items():
        config.loss[key] = value
    for key, value in (pmrl or {}).items():
        config.loss.pmrl[key] = value
    return resolve(config, lambda c: UCI_SHAPES)[0]


def test_pmrl_regularisation_within_groups_is_the_mean_over_the_groups():
    x = jax.random.normal(jax.random.key(0), (16, 3, 8))
    blocks = [L.pmrl_regularization_loss(x[4 * g:4 * (g + 1)]) for g in range(4)]
    np.testing.assert_allclose(L.pmrl_regularization_loss(x, groups=4), np.mean(blocks), rtol=1e-6)
    np.testing.assert_allclose(L.pmrl_loss(x, regularization_groups=4),
                               L.pmrl_alignment_loss(x) + np.mean(blocks), rtol=1e-6)
    with pytest.raises(ValueError, match="divides the batch of 16; got 3"):
        L.pmrl_loss(x, regularization_groups=3)


def test_device_scope_repels_within_each_devices_rows_of_the_sharded_batch():
    """As the paper's code: each device's batch alone, the alignment term unchanged."""
    mesh = sharding.make_mesh()
    z = jax.random.normal(jax.random.key(1), (32, 3, 8))
    device = objective_fn("pmrl", _resolved("pmrl", pmrl=dict(regularization_scope="device")), mesh.size)
    with jax.set_mesh(mesh):
        value = jax.jit(lambda z, t: device(z, t)[0], in_shardings=(sharding.batch_sharding(mesh), None))(
            jax.device_put(z, sharding.batch_sharding(mesh)), 0.07)
    rows = z.shape[0] // mesh.size
    expected = L.pmrl_alignment_loss(z) + np.mean(
        [L.pmrl_regularization_loss(z[d * rows:(d + 1) * rows]) for d in range(mesh.size)])
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    global_scope = objective_fn("pmrl", _resolved("pmrl"), mesh.size)
    np.testing.assert_allclose(global_scope(z, 0.07)[0], L.pmrl_loss(z), rtol=1e-6)
    assert abs(float(global_scope(z, 0.07)[0]) - float(value)) > 1e-4


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if n not in ("infonce", "triangle")])
def test_each_objective_calls_its_library_function_with_the_config(name):
    """Non-default anchor, smoothing and PMRL temperatures reach the loss."""
    config = _resolved(name, anchor="kar", label_smoothing=0.2, pmrl=dict(
        alignment_temperature=0.03, regularization_temperature=0.2, regularization_weight=0.5))
    z = jax.random.normal(jax.random.key(2), (16, 6, 8))
    anchor = list(config.data.modalities).index("kar")
    others = z[:, [m for m in range(6) if m != anchor]]
    expected = objective_loss(name, z, anchor, 0.1, 0.2, dict(
        alignment_temperature=0.03, regularization_temperature=0.2, regularization_weight=0.5))
    value, scores = objective_fn(name, config)(z, 0.1)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    if name == "gram":  # GRAM hands its volumes on to the matching head's negatives
        np.testing.assert_allclose(scores["volume"], L.get_similarity("volume")(z[:, anchor:anchor + 1], others),
                                   atol=1e-6)
    else:
        assert scores == {}
