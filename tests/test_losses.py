"""Every loss against its naive formulation (values and gradients), finite differences,
label smoothing against optax, degenerate inputs, and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from loss_table import LOSSES, default_k
from pmrl_jax import losses as L

NAMES = sorted(LOSSES)


def random_batch(seed, b, k, d, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(b, k, d)).astype(dtype)


@pytest.mark.parametrize("name", NAMES)
def test_value_and_gradient_match_naive(name):
    loss, reference, _ = LOSSES[name]
    k = default_k(name)
    with jax.enable_x64(True):
        x = random_batch(0, 12, k, 16, np.float64)
        value, grad = jax.jit(jax.value_and_grad(loss))(x)
        ref_value, ref_grad = jax.jit(jax.value_and_grad(reference))(x)
        np.testing.assert_allclose(value, ref_value, rtol=1e-10)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-7, atol=1e-10)
        check_grads(jax.jit(loss), (x[:5],), order=1, modes=["fwd", "rev"])
    x32 = x.astype(np.float32)
    assert jnp.asarray(loss(x32)).dtype == jnp.float32
    np.testing.assert_allclose(loss(x32), ref_value, rtol=2e-5)


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("name", ["gram", "pmrl", "symile", "anchored_infonce"])
def test_other_k_match_naive(name, k):
    loss, reference, _ = LOSSES[name]
    x = random_batch(k, 10, k, 12)
    np.testing.assert_allclose(loss(x), reference(x), rtol=5e-5)


def test_label_smoothing_matches_optax():
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(7, 7)))
    for eps in [0.0, 0.1, 0.5]:
        labels = optax.smooth_labels(jnp.eye(7), eps)
        expected = jnp.mean(optax.softmax_cross_entropy(logits, labels))
        np.testing.assert_allclose(L.common.smoothed_diagonal_cross_entropy(logits, eps), expected, rtol=1e-6)


def test_regularization_repels_instances_not_signs():
    """Two instances on the same line but pointing opposite ways (the peers' sign
    ambiguity): with the sign fixed their directions are opposite, not equal."""
    line = np.eye(4, dtype=np.float32)[0]
    x = np.stack([np.stack([line, line]), np.stack([-line, -line])])
    u = L.leading_direction(x)
    np.testing.assert_allclose(u[0], -u[1], atol=1e-6)


def degenerate_batches(k, d):
    rng = np.random.default_rng(k * 1000 + d)
    b = 6
    line = rng.normal(size=(b, 1, d))
    yield "aligned", np.repeat(line, k, axis=1)
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)[None, :, None]
    yield "antipodal", np.repeat(line, k, axis=1) * signs
    x = rng.normal(size=(b, k, d))
    x[1] = x[0]
    yield "duplicate_instances", x
    everything_identical = np.broadcast_to(line[:1], (b, k, d)).copy()
    yield "all_identical", everything_identical
    if d >= k:
        yield "orthonormal_rows", np.broadcast_to(np.eye(k, d), (b, k, d)).copy()  # sigma all equal


@pytest.mark.parametrize("name", NAMES)
def test_finite_values_and_gradients_at_degenerate_inputs(name):
    """Smallest, default and largest k; d = k (tightest, d = 2 for k = 2) and d = 2048,
    the latter also in bfloat16. Each (k, d, dtype) compiles once for all five cases."""
    loss, _, ks = LOSSES[name]
    grad_fn = jax.jit(jax.value_and_grad(loss))
    for k in sorted({ks[0], default_k(name), ks[-1]}):
        for d, dtype in [(k, jnp.float32), (2048, jnp.float32), (2048, jnp.bfloat16)]:
            for case, x in degenerate_batches(k, d):
                value, grad = grad_fn(jnp.asarray(x, dtype))
                assert np.isfinite(float(value)), (name, case, k, d, dtype)
                assert grad.dtype == dtype
                assert np.all(np.isfinite(np.asarray(grad, np.float32))), (name, case, k, d, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_inputs_compute_in_float32(name):
    loss, _, _ = LOSSES[name]
    x = random_batch(1, 8, default_k(name), 32)
    x_bf16 = jnp.asarray(x, jnp.bfloat16)
    value = loss(x_bf16)
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(value, loss(np.asarray(x_bf16, np.float32)), rtol=1e-6)


def test_gram_loss_prefers_aligned_batches():
    x = random_batch(2, 16, 3, 32)
    aligned = np.repeat(x[:, :1], 3, axis=1) + 0.01 * x
    loss = LOSSES["gram"][0]
    assert float(loss(aligned)) < float(loss(x))


# ---- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(temperature):
    x = random_batch(0, 4, 3, 8)
    with pytest.raises(ValueError, match="temperature"):
        L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        L.pmrl_alignment_loss(x, temperature=temperature)
    with pytest.raises(ValueError, match="regularization_temperature"):
        L.pmrl_loss(x, regularization_temperature=temperature)
    with pytest.raises(ValueError, match="temperature"):
        L.symile_loss(x, temperature=temperature)


def test_learned_temperature_is_traced_and_differentiable():
    x = random_batch(0, 8, 3, 8)
    grad = jax.grad(lambda t: L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=t))(0.07)
    assert np.isfinite(grad) and grad != 0


def test_shape_errors_name_the_argument():
    x = random_batch(0, 4, 3, 8)
    with pytest.raises(ValueError, match=r"`x`.*\[batch, k, d\]"):
        L.pmrl_loss(x[:, 0])
    with pytest.raises(ValueError, match="at least k=2"):
        L.pmrl_loss(x[:, :1])
    with pytest.raises(ValueError, match="exactly k=2"):
        L.triangle_contrastive_loss(x[:, 0], x, temperature=0.1)
    with pytest.raises(ValueError, match="same instances"):
        L.gram_contrastive_loss(x[:3, 0], x[:, 1:], temperature=0.1)
    with pytest.raises(ValueError, match="same instances"):
        L.infonce_loss(x[:3, 0], x[:, 1], temperature=0.1)
    with pytest.raises(ValueError, match="anchor"):
        L.anchored_infonce_loss(x, temperature=0.1, anchor=3)
    with pytest.raises(ValueError, match="label_smoothing"):
        L.infonce_loss(x[:, 0], x[:, 1], temperature=0.1, label_smoothing=1.0)
    with pytest.raises(TypeError, match="floating-point"):
        L.pmrl_loss(np.ones((4, 3, 8), np.int32))


def test_losses_vmap_over_a_leading_axis():
    x = random_batch(3, 8, 3, 8)
    stacked = np.stack([x, x[::-1] * 2.0])
    out = jax.vmap(lambda x: L.pmrl_loss(x))(stacked)
    np.testing.assert_allclose(out, [L.pmrl_loss(x), L.pmrl_loss(x[::-1])], rtol=1e-5)
