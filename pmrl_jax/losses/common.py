"""Numerical building blocks shared by the losses: dtype policy, input checks,
normalisation, a square root with a finite derivative at zero, and label-smoothed
cross-entropy on diagonal targets.

Everything here is a pure function of arrays; shape and temperature checks run at
trace time, so they cost nothing inside a compiled step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Relative floor under which a squared quantity (a Gram determinant, an eigenvalue)
# counts as "numerically zero" for its square root's derivative. float32 computes
# such quantities with an absolute error of a few 1e-7 (relative to their scale), so
# the floor sits just above that noise: below it the derivative of sqrt is taken at
# the floor, which makes it shrink smoothly to 0 instead of blowing up.
SQRT_FLOOR = 1e-6

# Smallest squared norm accepted by `l2_normalize` before it stops dividing.
NORM_FLOOR = 1e-24


def compute_dtype(x: jax.Array) -> jnp.dtype:
    """float32 for float32/bfloat16/float16 input; float64 stays float64 (x64 mode)."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def as_compute(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"expected a floating-point array, got dtype {x.dtype}")
    return x.astype(compute_dtype(x))


def check_rank(x: jax.Array, name: str, ndim: int, layout: str) -> None:
    if not (hasattr(x, "shape") and hasattr(x, "dtype")):
        raise TypeError(f"`{name}` must be an array (jax or numpy); got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a floating-point array; got dtype {x.dtype}")
    if jnp.ndim(x) != ndim:
        raise ValueError(
            f"`{name}` must have shape {layout} ({ndim} axes); got shape {jnp.shape(x)}"
        )


def check_modalities(x: jax.Array, name: str, *, min_k: int = 2, exact_k: int | None = None) -> None:
    """Checks a `[B, k, d]` batch of instances (one row per modality)."""
    check_rank(x, name, 3, "[batch, k, d]")
    k = x.shape[1]
    if exact_k is not None and k != exact_k:
        raise ValueError(f"`{name}` must hold exactly k={exact_k} modalities on axis 1; got k={k} (shape {x.shape})")
    if k < min_k:
        raise ValueError(f"`{name}` must hold at least k={min_k} modalities on axis 1; got k={k} (shape {x.shape})")


def check_others(others: jax.Array) -> None:
    """`others` `[batch, k - 1, d]` of the anchored losses: at least one modality besides the anchor."""
    check_rank(others, "others", 3, "[batch, k - 1, d]")
    if others.shape[1] == 0:
        raise ValueError(f"`others` holds no modality besides the anchor (shape {others.shape}); k - 1 must be >= 1")


def check_sets(queries: jax.Array, candidates: jax.Array) -> None:
    """Queries `[B1, q, d]` and candidates `[B2, c, d]` of a similarity measure: sets of
    q, c >= 1 rows (an empty set gave NaN or a score of the other side alone)."""
    check_rank(queries, "queries", 3, "[batch, q, d]")
    check_rank(candidates, "candidates", 3, "[batch, c, d]")
    check_same_width(queries, candidates, "`queries` and `candidates`")
    for name, x in (("queries", queries), ("candidates", candidates)):
        if x.shape[1] == 0:
            raise ValueError(f"`{name}` holds empty sets (shape {x.shape}); each needs at least one row on axis 1")


def check_batch(x: jax.Array, name: str) -> None:
    """A batch loss is a mean over instances: an empty batch would give NaN."""
    if jnp.shape(x)[0] == 0:
        raise ValueError(f"`{name}` holds no instances (shape {jnp.shape(x)}); a batch loss needs at least one")


def check_same_width(a: jax.Array, b: jax.Array, names: str) -> None:
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{names} must share the embedding width d; got {a.shape[-1]} and {b.shape[-1]}")


def check_temperature(temperature, name: str = "temperature") -> None:
    """Rejects a concrete temperature <= 0 or non-finite; traced (learned) ones pass."""
    if isinstance(temperature, jax.core.Tracer):
        return
    value = np.asarray(temperature)
    if value.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar; got shape {value.shape}")
    if not np.isfinite(value) or float(value) <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0; got {float(value)}")


def check_label_smoothing(label_smoothing: float) -> None:
    if not 0.0 <= float(label_smoothing) < 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1); got {label_smoothing}")


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / |x| along `axis`, in the compute dtype; a zero vector stays zero (finite gradient).

    Example:
        >>> import jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> losses.l2_normalize(jnp.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
        [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    return unit_and_inverse_norm(as_compute(x), axis)[0]


def unit_and_inverse_norm(x: jax.Array, axis: int = -1):
    """(u = x / |x|, 1 / |x|, |x|^2 >= NORM_FLOOR, |u|^2) along `axis` (kept), with
    `l2_normalize`'s floor, for losses that write the normalisation's derivative
    themselves: d (x / |x|) = (dx - u <u, dx>) / |x|, without the radial term below the
    floor, where x is divided by the constant sqrt(NORM_FLOOR) and so |u|^2 =
    |x|^2 / NORM_FLOOR < 1 (exactly 1 above it)."""
    squared_norm = jnp.sum(x * x, axis=axis, keepdims=True)
    inverse_norm = jax.lax.rsqrt(jnp.maximum(squared_norm, NORM_FLOOR))
    above_floor = squared_norm >= NORM_FLOOR
    unit_squared_norm = jnp.where(above_floor, 1.0, squared_norm / NORM_FLOOR).astype(x.dtype)
    return x * inverse_norm, inverse_norm, above_floor, unit_squared_norm


@jax.custom_jvp
def safe_sqrt(x: jax.Array, floor: jax.Array) -> jax.Array:
    """sqrt(max(x, 0)) whose derivative is taken at max(x, floor).

    The value is exact (0 stays 0, so dependent vectors have zero volume); the
    derivative 1 / (2 sqrt(max(x, floor))) stays finite where sqrt's is infinite.
    Where x is the square of a Lipschitz quantity (a volume, a singular value) its
    own derivative vanishes at 0, so the product goes smoothly to 0 there.
    `floor` must be > 0 and receives no gradient.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> float(losses.safe_sqrt(jnp.float32(0.25), 1e-12))
        0.5
        >>> bool(jnp.isfinite(jax.grad(lambda x: losses.safe_sqrt(x, 1e-12))(0.0)))  # sqrt's slope at 0 is infinite
        True
    """
    return jnp.sqrt(jnp.maximum(x, 0.0))


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    x, floor = primals
    x_dot, _ = tangents
    value = jnp.sqrt(jnp.maximum(x, 0.0))
    slope = 0.5 * jax.lax.rsqrt(jnp.maximum(x, floor))
    return value, slope * x_dot


def smoothed_diagonal_cross_entropy(logits: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean over rows of softmax cross-entropy whose target for row i is column i.

    With label smoothing eps the target distribution is (1 - eps) * onehot(i) + eps / C
    over the C columns (optax.smooth_labels), so the per-row loss is
    (1 - eps) * (lse - logit_ii) + eps * (lse - mean_j logit_ij).
    `logits` is `[B, C]` with C >= B; no one-hot matrix is built.
    """
    log_normaliser = jax.nn.logsumexp(logits, axis=-1)
    positives = jnp.diagonal(logits)
    loss = log_normaliser - positives
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss + label_smoothing * (
            log_normaliser - jnp.mean(logits, axis=-1)
        )
    return jnp.mean(loss)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def symmetric_cross_entropy(logits: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """1/2 (CE(logits, diag) + CE(logits^T, diag)) for square `[B, B]` logits: both
    retrieval directions, each with targets (1 - eps) I + eps / B.

    Its derivative, <P, d logits> with P = 1/(2B) (softmax_rows + softmax_columns -
    2 targets), is written out so that the backward pass is one fused sweep over the
    B x B logits (autodiff of the two logsumexps takes several).
    """
    return _symmetric_cross_entropy(logits, label_smoothing)[0]


def _symmetric_cross_entropy(logits, label_smoothing):
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"symmetric cross-entropy needs square [B, B] logits; got shape {logits.shape}")
    row_lse = jax.nn.logsumexp(logits, axis=1)
    column_lse = jax.nn.logsumexp(logits, axis=0)
    # Means over rows of (1 - eps)(lse_i - l_ii) + eps (lse_i - mean_j l_ij), and the same
    # over columns: the smoothing terms average to the mean of all logits (one reduction).
    loss = 0.5 * (jnp.mean(row_lse) + jnp.mean(column_lse)) - (1.0 - label_smoothing) * jnp.mean(jnp.diagonal(logits))
    if label_smoothing:
        loss = loss - label_smoothing * jnp.mean(logits)
    return loss, row_lse, column_lse


def symmetric_cross_entropy_and_gradient(logits, label_smoothing):
    """(loss, d loss / d logits) of `symmetric_cross_entropy`."""
    loss, row_lse, column_lse = _symmetric_cross_entropy(logits, label_smoothing)
    softmaxes = jnp.exp(logits - row_lse[:, None]) + jnp.exp(logits - column_lse[None, :])
    return loss, _symmetric_cross_entropy_gradient(softmaxes, label_smoothing)


def transpose_by_column_blocks(matrix: jax.Array, blocks: tuple[int, ...] = (128, 64, 32, 16, 8)) -> jax.Array:
    """`matrix.T` `[n, m] -> [m, n]`, written as the 3-d transpose `[n, m / b, b] ->
    [m / b, b, n]` for the first block width b that divides m (else plain `.T`): the same
    values, for a transpose that is materialised (e.g. behind `optimization_barrier`).
    XLA:CPU copies that form in one pass, where its layout assignment can split a 2-d `.T`
    into a transpose and a copy (docs/performance.md). Only the columns are split, so a row
    (batch) sharding carries through the reshape whatever the rows per device."""
    rows, columns = matrix.shape
    for block in blocks:
        if columns % block == 0:
            return matrix.reshape(rows, columns // block, block).transpose(1, 2, 0).reshape(columns, rows)
    return matrix.T


# Largest |logit - shift| for which `scaled_symmetric_cross_entropy_and_gradient`
# is exact to rounding: exp(-60) ~ 1e-26 is far from float32's subnormals (1.2e-38) and
# B * exp(60) ~ B * 1e26 from its overflow (3.4e38) for any B below 10^12.
FIXED_SHIFT_LIMIT = 60.0


def scaled_symmetric_cross_entropy_and_gradient(scores, scale, shift, label_smoothing):
    """(loss, d loss / d scores) of `symmetric_cross_entropy(scale * scores)`, for logits
    scale * scores that the caller knows lie within FIXED_SHIFT_LIMIT of `shift`.

    Every row and column logsumexp then shares that one shift, so the softmaxes of both
    directions come from one materialised exp(scale * scores - shift): one exp per logit
    instead of four (the row and column logsumexps' and each softmax's). The logits are
    never materialised (reductions of them are reductions of the scores).
    """
    # Materialised once; XLA would otherwise recompute the exps in each of their consumers.
    exps = jax.lax.optimization_barrier(jnp.exp(scale * scores - shift))
    row_sum = jnp.sum(exps, axis=1)
    column_sum = jnp.sum(exps, axis=0)
    loss = 0.5 * (jnp.mean(jnp.log(row_sum)) + jnp.mean(jnp.log(column_sum))) + shift
    loss = loss - (1.0 - label_smoothing) * scale * jnp.mean(jnp.diagonal(scores))
    if label_smoothing:
        loss = loss - label_smoothing * scale * jnp.mean(scores)
    softmaxes = exps * (1.0 / row_sum[:, None] + 1.0 / column_sum[None, :])
    return loss, scale * _symmetric_cross_entropy_gradient(softmaxes, label_smoothing)


def _symmetric_cross_entropy_gradient(softmaxes, label_smoothing):
    """P = 1/(2B) (softmax_rows + softmax_columns - 2 targets) from the sum of the two softmaxes."""
    n = softmaxes.shape[0]
    targets = (1.0 - label_smoothing) * jnp.eye(n, dtype=softmaxes.dtype) + label_smoothing / n
    return (0.5 / n) * (softmaxes - 2.0 * targets)


@symmetric_cross_entropy.defjvp
def _symmetric_cross_entropy_jvp(label_smoothing, primals, tangents):
    (logits,), (logits_dot,) = primals, tangents
    loss, gradient = symmetric_cross_entropy_and_gradient(logits, label_smoothing)
    return loss, jnp.sum(gradient * logits_dot)
