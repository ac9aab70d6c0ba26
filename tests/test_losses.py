"""Every loss against its naive formulation (values and gradients), finite differences,
label smoothing against optax, degenerate inputs, and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

from loss_table import LOSSES, default_k
import naive
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
    """The smallest k and k = 6 (or the largest, if smaller: k >= 4 takes the
    eigen-decomposition paths; k = 8 is checked against the naive forms elsewhere);
    d = k (tightest, d = 2 for k = 2) and d = 2048, the latter also in bfloat16. Each
    (k, d, dtype) compiles once for all five cases."""
    loss, _, ks = LOSSES[name]
    grad_fn = jax.jit(jax.value_and_grad(loss))
    for k in sorted({ks[0], min(ks[-1], 6)}):
        for d, dtype in [(k, jnp.float32), (2048, jnp.float32), (2048, jnp.bfloat16)]:
            for case, x in degenerate_batches(k, d):
                value, grad = grad_fn(jnp.asarray(x, dtype))
                assert np.isfinite(float(value)), (name, case, k, d, dtype)
                assert grad.dtype == dtype
                assert np.all(np.isfinite(np.asarray(grad, np.float32))), (name, case, k, d, dtype)


@pytest.mark.parametrize("name", ["gram", "pmrl"])
def test_debug_nans_is_silent_at_alignment_and_reports_a_nan_input(name):
    """The README's advice for a NaN hunt holds: run eagerly under jax_debug_nans and
    jax_debug_infs (which check each operation's output), the two losses with hand-written
    derivatives raise nothing at exact alignment, where an unguarded sqrt(det) or 1 / gap
    gives inf, and a NaN in the input is reported."""
    loss, _, _ = LOSSES[name]
    _, aligned = next(degenerate_batches(3, 8))
    with jax.debug_nans(True), jax.debug_infs(True):
        value, grad = jax.value_and_grad(loss)(jnp.asarray(aligned, jnp.float32))
        assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
        poisoned = aligned.astype(np.float32)
        poisoned[2, 1, 3] = np.nan
        with pytest.raises(FloatingPointError, match="nan"):
            loss(poisoned)


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


@pytest.mark.parametrize("k", [2, 3, 4, 6])
def test_gram_gradient_of_every_input_matches_naive(k):
    """GRAM's hand-written gradient (anchor, each other modality, the temperature) against
    autodiff of stacked determinants; k = 6 takes the eigen-decomposition adjugate."""
    import naive

    with jax.enable_x64(True):
        x = random_batch(10 + k, 9, k, 7, np.float64)
        args = (x[:, 0], x[:, 1:], 0.09)
        loss = lambda a, o, t: L.gram_contrastive_loss(a, o, temperature=t, label_smoothing=0.2)  # noqa: E731
        reference = lambda a, o, t: naive.gram_loss(a, o, t, 0.2)  # noqa: E731
        value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
        ref_value, ref_grads = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2)))(*args)
        np.testing.assert_allclose(value, ref_value, rtol=1e-10)
        for grad, ref_grad in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-7, atol=1e-10)
        if k == 3:  # forward mode by finite differences; second derivatives against naive's
            check_grads(jax.jit(loss), (x[:5, 0], x[:5, 1:], 0.09), order=1, modes=["fwd", "rev"])
            hessians = jax.jit(jax.hessian(loss, argnums=(0, 1, 2)))(*args)
            ref_hessians = jax.jit(jax.hessian(reference, argnums=(0, 1, 2)))(*args)
            for hessian, ref_hessian in zip(jax.tree.leaves(hessians), jax.tree.leaves(ref_hessians), strict=True):
                np.testing.assert_allclose(hessian, ref_hessian, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("k", [3, 5])
def test_gram_log_volume_logits_match_naive_and_finite_differences(k):
    """logits="log_volume": -log(V^2 + floor) / (2 tau) from stacked determinants, values
    and gradients; and V handed on for the hard negatives."""
    import naive

    with jax.enable_x64(True):
        x = random_batch(30 + k, 9, k, 7, np.float64)
        args = (x[:, 0], x[:, 1:], 0.09)
        loss = lambda a, o, t: L.gram_contrastive_loss(a, o, temperature=t, label_smoothing=0.2,  # noqa: E731
                                                       logits="log_volume", log_floor=1e-3)
        reference = lambda a, o, t: naive.symmetric_ce(  # noqa: E731
            -0.5 * jnp.log(naive.volume_matrix(a, o) ** 2 + 1e-3) / t, 0.2)
        value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
        ref_value, ref_grads = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2)))(*args)
        np.testing.assert_allclose(value, ref_value, rtol=1e-10)
        for grad, ref_grad in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-7, atol=1e-10)
        check_grads(jax.jit(loss), (x[:5, 0], x[:5, 1:], 0.09), order=1, modes=["fwd", "rev"])
        _, volumes = L.gram_contrastive_loss(*args[:2], temperature=0.09, logits="log_volume", return_volumes=True)
        np.testing.assert_allclose(volumes, naive.volume_matrix(x[:, 0], x[:, 1:]), rtol=1e-9, atol=1e-12)


def test_gram_log_volume_ranks_anchors_by_their_distance_from_each_candidate_span():
    """Over the anchors of one candidate (a column), log V^2 = log det M_j + log d_ij^2
    with d_ij the anchor's distance from the span of candidate j's rows (least squares,
    an independent formulation): the candidate's own volume cancels from the column's
    softmax, so the column loss is the cross-entropy of -log d^2 / (2 tau)."""
    x = random_batch(41, 10, 4, 12, np.float64)
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    anchor, others = x[:, 0], x[:, 1:]
    distances = np.empty((10, 10))
    for j in range(10):
        basis = others[j].T                                              # [d, k-1]
        residual = anchor.T - basis @ np.linalg.lstsq(basis, anchor.T, rcond=None)[0]
        distances[:, j] = np.sum(residual**2, axis=0)
    tau = 0.1
    with jax.enable_x64(True):
        loss = float(L.gram_contrastive_loss(anchor, others, temperature=tau, label_smoothing=0.0,
                                             logits="log_volume", log_floor=1e-300))
        column_part = float(naive.cross_entropy(jnp.asarray(-np.log(distances).T / (2 * tau))))
        row_logits = -np.log(np.asarray(naive.volume_matrix(anchor, others)) ** 2) / (2 * tau)
        row_part = float(naive.cross_entropy(jnp.asarray(row_logits)))
    np.testing.assert_allclose(loss, 0.5 * (row_part + column_part), rtol=1e-9)


def test_gram_logits_option_is_checked():
    x = random_batch(0, 4, 3, 8)
    with pytest.raises(ValueError, match="logits='log'"):
        L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.1, logits="log")
    with pytest.raises(ValueError, match="log_floor"):
        L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.1, logits="log_volume", log_floor=0.0)


def test_gram_temperature_gradient_is_accurate_in_float32():
    """d loss / d tau = sum(P V) / tau^2 sums terms of both signs that cancel (P sums to 0);
    float32 gives it to 5e-6 of float64 on a random (unaligned) batch, where it is smallest
    (5e-8 measured; 3e-5 with V uncentred)."""
    x = random_batch(5, 256, 3, 128)
    grad = jax.jit(jax.grad(lambda x, t: L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=t), argnums=1))
    single = grad(x, np.float32(0.07))
    with jax.enable_x64(True):
        double = grad(x.astype(np.float64), np.float64(0.07))
    np.testing.assert_allclose(single, double, rtol=5e-6)


@pytest.mark.parametrize("temperature", [0.07, 1.0 / (2.0 * L.common.FIXED_SHIFT_LIMIT)])
def test_fixed_shift_cross_entropy_matches_the_max_shifted_one(temperature):
    """`scaled_symmetric_cross_entropy_and_gradient` (one exp per logit, shifted by the
    middle of the logits' range) against float64 autodiff of `symmetric_cross_entropy`
    (per-row and per-column maxima), for GRAM-like logits -V / tau with V in [0, 1], also at
    the smallest temperature it serves, where a row of volumes 1 (logits -120) would
    underflow float32 exps with no shift, and a column of volumes 0 overflow them with a
    shift at the range's low end."""
    volumes = np.random.default_rng(3).uniform(size=(48, 48))
    volumes[5, :] = 1.0
    volumes[:, 7] = 0.0
    scale, shift = -1.0 / temperature, -0.5 / temperature

    def reference(v):
        return L.common.symmetric_cross_entropy(scale * v, 0.1)

    with jax.enable_x64(True):
        ref_value, ref_grad = jax.value_and_grad(reference)(volumes)
        value, grad = L.common.scaled_symmetric_cross_entropy_and_gradient(volumes, scale, shift, 0.1)
        np.testing.assert_allclose(value, ref_value, rtol=1e-13)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-11, atol=1e-15)
    volumes32 = volumes.astype(np.float32)
    value, grad = jax.jit(L.common.scaled_symmetric_cross_entropy_and_gradient, static_argnums=3)(
        volumes32, np.float32(scale), np.float32(shift), 0.1
    )
    np.testing.assert_allclose(value, ref_value, rtol=2e-6)
    np.testing.assert_allclose(grad, ref_grad, rtol=2e-4, atol=1e-6 * np.abs(ref_grad).max())


@pytest.mark.parametrize("shape", [(256, 512), (24, 40), (5, 96), (8, 8), (7, 5), (16, 1), (16, 12)])
def test_transpose_by_column_blocks_is_the_transpose(shape):
    """GRAM's materialised w^T: column blocks of 128, 8, 32 and 8, and the plain `.T` when no
    block width divides the columns; every entry distinct, so a misplaced one shows."""
    matrix = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(L.common.transpose_by_column_blocks(matrix), matrix.T)
    np.testing.assert_array_equal(jax.jit(L.common.transpose_by_column_blocks)(matrix), matrix.T)


@pytest.mark.parametrize("traced", [False, True])
def test_gram_below_the_fixed_shift_temperature_takes_the_max_shifted_path(traced):
    """At tau = 0.004 the logits span [-250, 0], too wide for one shared shift (its exps
    would overflow float32); the loss must switch to per-row and per-column maxima, for a
    constant and for a traced (learned) temperature, and match float64."""
    import naive

    x = random_batch(4, 32, 3, 16)
    # A nearly aligned instance: volume ~0.03, the largest logit (one shift would overflow).
    x[3, 1:] = x[3, 0] + 0.02 * x[3, 1:]
    temperature = 0.004
    assert 0.5 / temperature > L.common.FIXED_SHIFT_LIMIT
    if traced:
        step = jax.jit(jax.value_and_grad(lambda x, t: L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=t)))
        value, grad = step(x, np.float32(temperature))
    else:
        step = jax.jit(jax.value_and_grad(lambda x: L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=temperature)))
        value, grad = step(x)
    with jax.enable_x64(True):
        ref_value, ref_grad = jax.value_and_grad(lambda x: naive.gram_loss(x[:, 0], x[:, 1:], temperature))(
            x.astype(np.float64)
        )
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-3, atol=1e-4 * np.abs(ref_grad).max())


def test_gram_gradient_through_the_normalisation_and_its_floor():
    """GRAM writes the derivative of its L2 normalisation itself (the modalities' radial
    parts from quantities it already has). Against autodiff of `l2_normalize` followed by
    the naive volumes, with inputs of very different norms, two rows of other modalities
    and one anchor row below NORM_FLOOR (normalised by the constant sqrt(NORM_FLOOR), so
    not unit: their gradient has no radial projection, and the anchor's own Gram entry is
    |x|^2 / NORM_FLOOR, not 1)."""
    import naive

    def reference(anchor, others, temperature):
        volumes = naive.volume_matrix_of_rows(L.common.l2_normalize(anchor), L.common.l2_normalize(others))
        return naive.symmetric_ce(-volumes / temperature, 0.1)

    with jax.enable_x64(True):
        x = random_batch(12, 8, 3, 7, np.float64) * np.geomspace(1e-3, 1e3, 8)[:, None, None]
        x[2, 1] *= 1e-14 / np.linalg.norm(x[2, 1])  # |x|^2 = 1e-28 < NORM_FLOOR
        x[5, 2] *= 3e-13 / np.linalg.norm(x[5, 2])
        x[6, 0] *= 5e-13 / np.linalg.norm(x[6, 0])  # an anchor: |u|^2 = 0.25
        args = (x[:, 0], x[:, 1:], 0.1)
        loss = lambda a, o, t: L.gram_contrastive_loss(a, o, temperature=t)  # noqa: E731
        value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*args)
        ref_value, ref_grads = jax.jit(jax.value_and_grad(reference, argnums=(0, 1, 2)))(*args)
        np.testing.assert_allclose(value, ref_value, rtol=1e-12)
        for grad, ref_grad in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-8, atol=1e-12 * np.abs(ref_grad).max())
        # the rows below the floor do receive a (large, finite) gradient
        assert np.all(np.abs(grads[1][2, 0]) > 0) and np.all(np.abs(grads[1][5, 1]) > 0)
        assert np.all(np.abs(grads[0][6]) > 0)


def test_gram_step_temporaries_stay_under_the_allocator_mmap_threshold():
    """GRAM's forward+backward at B = 1024, k = 3, d = 512 (the issue's benchmark size)
    keeps its temporaries under 32 MiB: XLA:CPU allocates them on every call, and glibc
    maps a larger buffer afresh each time (~15,000 page faults per call, a third of the
    time; benchmarks/losses.py). Compiled only."""
    x = jax.ShapeDtypeStruct((1024, 3, 512), jnp.float32)
    step = jax.jit(jax.value_and_grad(lambda x: L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07)))
    analysis = step.lower(x).compile().memory_analysis()
    assert analysis.temp_size_in_bytes < 32 * 2**20, analysis.temp_size_in_bytes / 2**20


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
    with pytest.raises(TypeError, match="`x` must be a floating-point array; got dtype int32"):
        L.pmrl_loss(np.ones((4, 3, 8), np.int32))
    with pytest.raises(TypeError, match="`b` must be a floating-point array; got dtype bool"):
        L.infonce_loss(x[:, 0], x[:, 1] > 0, temperature=0.1)
    with pytest.raises(TypeError, match="`others` must be a floating-point array"):
        L.gram_contrastive_loss(x[:, 0], np.zeros((4, 2, 8), np.int8), temperature=0.1)
    with pytest.raises(TypeError, match="`x` must be an array \\(jax or numpy\\); got list"):
        L.pmrl_loss(x.tolist())
    with pytest.raises(ValueError, match="`others` holds no modality besides the anchor"):
        L.gram_contrastive_loss(x[:, 0], x[:, :0], temperature=0.1)
    with pytest.raises(ValueError, match="`others` holds no modality besides the anchor"):
        L.volume_matrix(x[:, 0], x[:, :0])


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_is_an_error_not_a_nan(name):
    """A batch loss is a mean over instances; with none it would be NaN (it was, silently)."""
    loss, _, _ = LOSSES[name]
    with pytest.raises(ValueError, match=r"holds no instances \(shape \(0, "):
        loss(np.ones((0, default_k(name), 8), np.float32))


def test_losses_vmap_over_a_leading_axis():
    x = random_batch(3, 8, 3, 8)
    stacked = np.stack([x, x[::-1] * 2.0])
    out = jax.vmap(lambda x: L.pmrl_loss(x))(stacked)
    np.testing.assert_allclose(out, [L.pmrl_loss(x), L.pmrl_loss(x[::-1])], rtol=1e-5)
