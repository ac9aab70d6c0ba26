"""On 8 (fake CPU) devices with the batch sharded on its leading axis, every loss under
`jax.jit` equals its single-device value and gradient, and the gradient includes the
terms that pair instances on different devices (the official GRAM/PMRL code gathers
other devices' embeddings without gradient and its PMRL regulariser sees only the local
batch)."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from loss_table import LOSSES, default_k

NAMES = sorted(LOSSES)
# Losses with terms between instances; pmrl_alignment is per instance.
BATCH_CONTRASTIVE = [n for n in NAMES if n != "pmrl_alignment"]


@pytest.fixture(scope="module")
def mesh():
    assert jax.device_count() == 8, "conftest must provide 8 fake CPU devices"
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))


def _batch(name):
    return np.random.default_rng(0).normal(size=(32, default_k(name), 24)).astype(np.float32)


@pytest.mark.parametrize("name", NAMES)
def test_sharded_equals_single_device(name, mesh):
    loss = LOSSES[name][0]
    x = _batch(name)
    step = jax.jit(jax.value_and_grad(loss))
    value_1, grad_1 = step(jax.device_put(x, jax.devices()[0]))
    sharded = jax.device_put(x, NamedSharding(mesh, P("data")))
    value_8, grad_8 = step(sharded)
    assert len(grad_8.sharding.device_set) == 8
    np.testing.assert_allclose(value_8, value_1, rtol=1e-5)
    np.testing.assert_allclose(grad_8, grad_1, rtol=1e-5, atol=1e-7)
    assert np.all(np.linalg.norm(np.asarray(grad_8).reshape(32, -1), axis=-1) > 0)


@pytest.mark.parametrize("name", BATCH_CONTRASTIVE)
def test_gradient_includes_cross_device_pairs(name, mesh):
    """Mean of per-device losses (what a local-batch loss computes) has another gradient."""
    loss = LOSSES[name][0]
    x = _batch(name)
    global_grad = jax.jit(jax.grad(loss))(jax.device_put(x, NamedSharding(mesh, P("data"))))
    local = lambda x: sum(loss(x[i * 4 : (i + 1) * 4]) for i in range(8)) / 8  # noqa: E731
    local_grad = jax.jit(jax.grad(local))(x)
    difference = np.abs(np.asarray(global_grad) - np.asarray(local_grad)).max()
    assert difference > 1e-3 * np.abs(np.asarray(global_grad)).max(), name
