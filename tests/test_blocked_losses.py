"""The blocked (ring) losses equal the unblocked ones, value and gradient, on 1, 2, 4
and 8 devices, and their compiled programs hold far fewer scores per device."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmrl_jax import losses as L
from pmrl_jax import sharding
from pmrl_jax.losses import blocked

B, D = 48, 16

PAIRS = {
    "infonce": (lambda x, t: L.infonce_loss(x[:, 0], x[:, 1], temperature=t, label_smoothing=0.1),
                lambda x, t: blocked.blocked_infonce_loss(x[:, 0], x[:, 1], temperature=t, label_smoothing=0.1), 2),
    "anchored_infonce": (lambda x, t: L.anchored_infonce_loss(x, temperature=t, anchor=1),
                         lambda x, t: blocked.blocked_anchored_infonce_loss(x, temperature=t, anchor=1), 3),
    "gram": (lambda x, t: L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=t),
             lambda x, t: blocked.blocked_gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=t), 4),
    "triangle": (lambda x, t: L.triangle_contrastive_loss(x[:, 0], x[:, 1:], temperature=t),
                 lambda x, t: blocked.blocked_triangle_contrastive_loss(x[:, 0], x[:, 1:], temperature=t), 3),
    "symile": (lambda x, t: L.symile_loss(x, temperature=t),
               lambda x, t: blocked.blocked_symile_loss(x, temperature=t), 3),
    "pmrl": (lambda x, t: L.pmrl_loss(x, regularization_temperature=t),
             lambda x, t: blocked.blocked_pmrl_loss(x, regularization_temperature=t), 3),
}


@functools.cache
def _unblocked(name):
    unblocked, _, k = PAIRS[name]
    x = jax.random.normal(jax.random.key(0), (B, k, D))
    temperature = jnp.float32(0.2)
    return x, temperature, jax.jit(jax.value_and_grad(unblocked, argnums=(0, 1)))(x, temperature)


@pytest.mark.parametrize("devices", [1, 2, 4, 8])
@pytest.mark.parametrize("name", PAIRS)
def test_blocked_loss_equals_unblocked_value_and_gradient(name, devices):
    x, temperature, (expected_value, expected_grads) = _unblocked(name)
    ring = PAIRS[name][1]
    mesh = sharding.make_mesh(devices=jax.devices()[:devices])
    with jax.set_mesh(mesh):
        x_sharded = jax.device_put(x, sharding.batch_sharding(mesh))
        value, grads = jax.jit(jax.value_and_grad(ring, argnums=(0, 1)))(x_sharded, temperature)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    # atol: float32 summation order, for gradient entries near 0 (typical ones are ~1e-3)
    np.testing.assert_allclose(grads[0], expected_grads[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[1], expected_grads[1], rtol=1e-5)
    assert np.all(np.abs(np.asarray(grads[0])).sum(axis=(1, 2)) > 0)  # every instance gets a gradient



@pytest.mark.parametrize("name", PAIRS)
def test_blocked_loss_on_an_explicit_mesh(name):
    """`jax.make_mesh`'s default Explicit axes: the ring runs under shard_map as on Auto."""
    x, temperature, (expected_value, expected_grads) = _unblocked(name)
    ring = PAIRS[name][1]
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh):
        x_sharded = jax.device_put(x, jax.sharding.PartitionSpec("data"))
        value, grads = jax.jit(jax.value_and_grad(ring, argnums=(0, 1)))(x_sharded, temperature)
    np.testing.assert_allclose(value, expected_value, rtol=1e-5)
    np.testing.assert_allclose(grads[0], expected_grads[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads[1], expected_grads[1], rtol=1e-5)

def test_blocked_losses_need_a_mesh_and_a_divisible_batch():
    x = jnp.ones((6, 2, 4))
    with pytest.raises(ValueError, match="jax.set_mesh"):
        blocked.blocked_infonce_loss(x[:, 0], x[:, 1], temperature=0.1)
    with jax.set_mesh(sharding.make_mesh(devices=jax.devices()[:4])):
        with pytest.raises(ValueError, match="global batch of 6 is not divisible by the 4 devices"):
            blocked.blocked_infonce_loss(x[:, 0], x[:, 1], temperature=0.1)


@pytest.mark.parametrize("name", PAIRS)
def test_blocked_losses_reject_an_empty_batch(name):
    ring, k = PAIRS[name][1], PAIRS[name][2]
    with jax.set_mesh(sharding.make_mesh(devices=jax.devices()[:2])):
        with pytest.raises(ValueError, match="holds no instances"):
            ring(jnp.ones((0, k, 4)), 0.1)


def test_blocked_gram_step_holds_a_fraction_of_the_unblocked_memory():
    """Compiled, not run: fwd+bwd at B = 2048 on 8 devices against 1 device unblocked."""
    shape = jax.ShapeDtypeStruct((2048, 3, 64), jnp.float32)
    loss = PAIRS["gram"]

    def temp_bytes(fn, mesh):
        with jax.set_mesh(mesh):
            grad = jax.jit(jax.grad(lambda x: fn(x, 0.1)),
                           in_shardings=sharding.batch_sharding(mesh), out_shardings=sharding.batch_sharding(mesh))
            return grad.lower(shape).compile().memory_analysis().temp_size_in_bytes

    one = temp_bytes(loss[0], sharding.make_mesh(devices=jax.devices()[:1]))
    eight = temp_bytes(loss[1], sharding.make_mesh())
    assert eight <= one / 6, (one, eight)


def test_training_with_blocked_losses_follows_the_unblocked_curve(tmp_path):
    """gram's smoke run (GRAM with the matching head, no warm start) on 8 devices: the
    blocked loss wired into the step. Each blocked loss's value and gradient against the
    plain one: the tests above."""
    import json

    from configs_util import load_config
    from pmrl_jax import train

    curves = {}
    for blocked_loss in (False, True):
        config = load_config("gram")
        config.log_every, config.loss.blocked = 1, blocked_loss
        config.eval.every, config.warm_start.steps = 0, 0  # the loss curves only
        train.train(config, str(tmp_path / str(blocked_loss)))
        with open(tmp_path / str(blocked_loss) / "metrics.jsonl") as f:
            curves[blocked_loss] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
    np.testing.assert_allclose(curves[True], curves[False], rtol=1e-5)


def test_a_loss_without_blocked_form_is_rejected():
    from configs_util import load_config
    from pmrl_jax import checks
    from pmrl_jax.resolve import resolve

    config = load_config("all_pairs")
    config.loss.blocked = True
    shapes = {m: (8,) for m in ("fac", "fou", "kar", "mor", "pix", "zer")}
    with pytest.raises(ValueError, match="config.loss.name='all_pairs' has no blocked form"):
        checks.validate(resolve(config, lambda c: shapes)[0], shapes, num_devices=8)
