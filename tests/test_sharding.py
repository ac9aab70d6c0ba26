"""On 8 (fake CPU) devices with the batch sharded on its leading axis, every loss under
`jax.jit` equals its single-device value and gradient, and the gradient includes the
terms that pair instances on different devices (the official GRAM/PMRL code gathers
other devices' embeddings without gradient and its PMRL regulariser sees only the local
batch)."""

import contextlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from loss_table import LOSSES, default_k
from pmrl_jax import losses as L

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


# --- Meshes with Explicit axes (the default of `jax.make_mesh` on current JAX) ---------
# Array types carry their sharding there, and a [B, B] product of two batch-sharded
# operands is a trace-time error unless the library runs it with those axes made Auto.


@pytest.fixture(scope="module")
def explicit_mesh():
    return jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))


def _mesh_context(mesh, in_context):
    """`jax.set_mesh(mesh)`, or no context mesh (the inputs' types still name `mesh`)."""
    return jax.set_mesh(mesh) if in_context else contextlib.nullcontext()


@pytest.mark.parametrize("in_context", [True, False], ids=["set_mesh", "no_context_mesh"])
@pytest.mark.parametrize("name", NAMES)
def test_explicit_mesh_equals_single_device(name, in_context, explicit_mesh):
    loss = LOSSES[name][0]
    x = _batch(name)
    value_1, grad_1 = jax.jit(jax.value_and_grad(loss))(jax.device_put(x, jax.devices()[0]))
    sharded = jax.device_put(x, NamedSharding(explicit_mesh, P("data")))
    with _mesh_context(explicit_mesh, in_context):
        value_8, grad_8 = jax.jit(jax.value_and_grad(loss))(sharded)
    assert value_8.sharding.is_fully_replicated
    assert jax.typeof(grad_8).sharding.spec == jax.typeof(sharded).sharding.spec
    np.testing.assert_allclose(value_8, value_1, rtol=1e-5)
    np.testing.assert_allclose(grad_8, grad_1, rtol=1e-5, atol=1e-7)


def test_explicit_mesh_learned_temperature_and_eager_call(explicit_mesh):
    """A temperature passed as a (replicated) array gets its gradient; an eager call works."""
    x = _batch("gram")

    def loss(x, temperature):
        return L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=temperature)

    temperature = np.float32(0.07)
    value_1, grads_1 = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, temperature)
    with jax.set_mesh(explicit_mesh):
        sharded = jax.device_put(x, P("data"))
        replicated = jax.device_put(temperature, P())
        value_8, grads_8 = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(sharded, replicated)
        eager = loss(sharded, replicated)
    np.testing.assert_allclose(value_8, value_1, rtol=1e-5)
    np.testing.assert_allclose(eager, value_1, rtol=1e-5)
    np.testing.assert_allclose(grads_8[0], grads_1[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grads_8[1], grads_1[1], rtol=1e-5)


SCORE_MATRICES = {
    "volume_matrix": lambda x: L.volume_matrix(x[:, 0], x[:, 1:]),
    "cosine_matrix": lambda x: L.cosine_matrix(x[:, 0], x[:, 1]),
    "mip_matrix": lambda x: L.mip_matrix(x[:, :1], x[:, 1:]),
    "triangle_area_matrix": lambda x: L.triangle_area_matrix(x[:, 0], x[:, 1:]),
    **{f"similarity {name}": (lambda name: lambda x: L.get_similarity(name)(x[:, :1], x[:, 1:]))(name)
       for name in L.similarity_names()},
    # Candidates on the left: the measure transposes a product internally.
    "similarity volume, set queries": lambda x: L.get_similarity("volume")(x[:, 1:], x[:, :1]),
}


@pytest.mark.parametrize("mesh_shape", [(8,), (4, 2)], ids=["data8", "data4xfsdp2"])
@pytest.mark.parametrize("name", sorted(SCORE_MATRICES))
def test_explicit_mesh_score_matrix_rows_follow_the_queries(name, mesh_shape):
    axes = ("data", "fsdp")[: len(mesh_shape)]
    mesh = jax.make_mesh(mesh_shape, axes, axis_types=(AxisType.Explicit,) * len(axes))
    batch_axes = axes[0] if len(axes) == 1 else axes
    score = SCORE_MATRICES[name]
    x = np.random.default_rng(1).normal(size=(32, 3, 24)).astype(np.float32)
    expected = jax.jit(score)(x)
    with jax.set_mesh(mesh):
        scores = jax.jit(score)(jax.device_put(x, P(batch_axes)))
    assert jax.typeof(scores).sharding.spec == P(batch_axes, None)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)


def test_registered_measure_runs_on_an_explicit_mesh(explicit_mesh, monkeypatch):
    """A measure a user registers, written without a thought for sharding, is wrapped as
    the built-in ones are: unwrapped, its [B1, B2] product of two batch-sharded operands
    is an error on the Explicit mesh; registered, it equals the single-device scores and
    its rows keep the queries' sharding. Off Explicit meshes it is called as it is."""
    from pmrl_jax.losses import similarity

    monkeypatch.setattr(similarity, "_SIMILARITIES", dict(similarity._SIMILARITIES))

    def mean_dot(queries, candidates):
        return jnp.mean(queries, axis=1) @ jnp.mean(candidates, axis=1).T

    registered = L.register_similarity("mean_dot", mean_dot)
    assert L.get_similarity("mean_dot") is registered
    x = np.random.default_rng(3).normal(size=(32, 3, 24)).astype(np.float32)
    expected = jax.jit(mean_dot)(x[:, :1], x[:, 1:])
    with jax.set_mesh(explicit_mesh):
        sharded = jax.device_put(x, P("data"))
        with pytest.raises(Exception, match="illegally sharded result"):
            jax.jit(mean_dot)(sharded[:, :1], sharded[:, 1:])
        scores = jax.jit(registered)(sharded[:, :1], sharded[:, 1:])
    assert jax.typeof(scores).sharding.spec == P("data", None)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert str(jax.make_jaxpr(registered)(x[:, :1], x[:, 1:])) == str(jax.make_jaxpr(mean_dot)(x[:, :1], x[:, 1:]))


PER_INSTANCE = {
    "gram_volume": lambda x: L.gram_volume(x),
    "singular_values": lambda x: L.singular_values(x),
    "leading_direction": lambda x: L.leading_direction(x),
    "symmetric_eigh": lambda x: L.symmetric_eigh(L.gram_matrix(x))[0],
}


@pytest.mark.parametrize("name", sorted(PER_INSTANCE))
def test_explicit_mesh_per_instance_functions_stay_sharded(name, explicit_mesh):
    """No product across instances: these run on the Explicit mesh as they are, and
    their results keep the batch sharding."""
    fn = PER_INSTANCE[name]
    x = np.random.default_rng(2).normal(size=(32, 3, 24)).astype(np.float32)
    expected = jax.jit(fn)(x)
    with jax.set_mesh(explicit_mesh):
        result = jax.jit(fn)(jax.device_put(x, P("data")))
    assert jax.typeof(result).sharding.spec[0] == "data"
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_auto_mesh_program_is_the_undecorated_one(name, mesh):
    """Off Explicit meshes the decorator adds nothing to the traced program."""
    loss = LOSSES[name][0]
    x = jax.device_put(_batch(name), NamedSharding(mesh, P("data")))
    with jax.set_mesh(mesh):
        decorated = str(jax.make_jaxpr(jax.grad(loss))(x))
        with _undecorated_losses():
            undecorated = str(jax.make_jaxpr(jax.grad(loss))(x))
    assert decorated == undecorated


@contextlib.contextmanager
def _undecorated_losses():
    """Within: every function of `pmrl_jax.losses` and its modules that
    `runs_in_auto_axes` decorated is its undecorated self (`__wrapped__`)."""
    patched = []
    for module in (L, *(m for n, m in sys.modules.items() if n.startswith("pmrl_jax.losses."))):
        for attribute, value in list(vars(module).items()):
            if hasattr(value, "auto_axes_output"):
                patched.append((module, attribute, value))
                setattr(module, attribute, value.__wrapped__)
    assert patched, "no decorated loss found"
    try:
        yield
    finally:
        for module, attribute, value in patched:
            setattr(module, attribute, value)
