"""GRAM's volume-based contrastive loss (docs/math.md, "GRAM")."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pmrl_jax.losses import common
from pmrl_jax.losses.explicit_axes import runs_in_auto_axes
from pmrl_jax.losses.geometry import pair_determinant, symmetric_adjugate, symmetric_determinant, volume_matrix_terms

LOGITS = ("volume", "log_volume")


@runs_in_auto_axes("scalar")
def gram_contrastive_loss(
    anchor: jax.Array,
    others: jax.Array,
    *,
    temperature: float | jax.Array,
    label_smoothing: float = 0.1,
    return_volumes: bool = False,
    logits: str = "volume",
    log_floor: float = 1e-4,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """GRAM's symmetric volume InfoNCE.

        V[i, j] = Vol(a_i, m1_j, ..., m{k-1}_j)         (`volume_matrix`, unit rows)
        logits  = -V / tau                              (logits="volume", the paper's)
                  -log(V^2 + floor) / (2 tau)           (logits="log_volume")
        L_vol   = 1/2 * (CE_ls(logits, diag) + CE_ls(logits^T, diag))

    CE_ls is softmax cross-entropy with label smoothing (0.1 in the official code) and
    the true pairs on the diagonal: rows rank candidates for each anchor, columns rank
    anchors for each candidate.

    Source: Cicchetti et al., "Gramian Multimodal Representation Learning and Alignment",
    ICLR 2025, and its official code (temperature initialised at 0.07, learnable).
    Differences from that code: the volume has a finite derivative at alignment (its
    `sqrt(abs(det))` has none), no [B, B, k, k] tensor is built, and under `jax.jit` with
    a sharded batch the loss and its gradient cover the global batch exactly.

    `logits="log_volume"` is this library's option, not the paper's. Since
    log V^2 = log det M_j + log(s - c^T M_j^-1 c), the candidate's own volume (det M_j)
    becomes an additive term of its logit: it cancels from the softmax over anchors (a
    column), and over candidates (a row) it is one bias per candidate rather than a factor
    on every anchor's volume. What is left is the Schur complement, the squared distance
    of the anchor from the candidate's span. Volumes near 0 spread over many units of
    logit instead of crowding at -0 / tau. `log_floor`
    keeps the logit and its derivative finite at V = 0. Its gradient is plain autodiff
    of the closed-form determinant, not the fused one of the volume logits.

    Args:
      anchor: `[B, d]` embeddings of the anchor modality (text in the paper).
      others: `[B, k-1, d]` embeddings of the other modalities, row i the same instance.
      temperature: tau > 0 (a Python float or a learned scalar).
      label_smoothing: in [0, 1).
      return_volumes: also return the volume matrix V `[B, B]` the loss was computed
        from, without a derivative (the training step draws its hard negatives from it).
      logits: "volume" (-V / tau) or "log_volume" (-log(V^2 + log_floor) / (2 tau)).
      log_floor: > 0, added to V^2 under the logarithm (`logits="log_volume"` only).

    Returns:
      The scalar mean loss (float32), and V with `return_volumes`.

    Example:
        >>> import jax
        >>> from pmrl_jax import losses
        >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
        >>> aligned = x[:, :1].repeat(3, axis=1) + 0.01 * x               # each instance's rows nearly one vector
        >>> bool(losses.gram_contrastive_loss(aligned[:, 0], aligned[:, 1:], temperature=0.07)
        ...      < losses.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07))
        True
    """
    common.check_rank(anchor, "anchor", 2, "[batch, d]")
    common.check_others(others)
    common.check_same_width(anchor, others, "`anchor` and `others`")
    common.check_batch(anchor, "anchor")
    if anchor.shape[0] != others.shape[0]:
        raise ValueError(
            f"`anchor` and `others` must hold the same instances; got batch {anchor.shape[0]} and {others.shape[0]}"
        )
    common.check_temperature(temperature)
    common.check_label_smoothing(label_smoothing)
    if logits not in LOGITS:
        raise ValueError(f"logits={logits!r}; expected one of {LOGITS}")
    if not log_floor > 0:
        raise ValueError(f"log_floor must be > 0; got {log_floor}")
    anchor, others = common.as_compute(anchor), common.as_compute(others)
    if logits == "log_volume":
        determinant = jnp.maximum(pair_determinant_of(anchor, others), 0.0)
        loss = common.symmetric_cross_entropy(
            -0.5 * jnp.log(determinant + log_floor) / jnp.asarray(temperature, anchor.dtype), label_smoothing)
        return (loss, jax.lax.stop_gradient(jnp.sqrt(determinant))) if return_volumes else loss
    modalities = tuple(others[:, m] for m in range(others.shape[1]))
    loss, volumes = _volume_infonce(anchor, modalities, jnp.asarray(temperature, anchor.dtype), label_smoothing)
    return (loss, jax.lax.stop_gradient(volumes)) if return_volumes else loss


def pair_determinant_of(anchor: jax.Array, others: jax.Array) -> jax.Array:
    """det G_ij = V[i, j]^2 `[B1, B2]` of L2-normalised rows, differentiable by autodiff."""
    cosines, candidate_det, adjugate, anchor_gram = volume_matrix_terms(anchor, others)
    return pair_determinant([cosines[:, a] for a in range(cosines.shape[1])], candidate_det, adjugate, anchor_gram)


def _symmetric_row_dots(left, right):
    """[<left_a,j, right_b,j>]_ab `[B2, n, n]` from two tuples of n `[B2, d]` arrays whose
    dot products the caller knows to be symmetric in a, b: the n (n + 1) / 2 with a <= b,
    mirrored. Row-wise dot products, which XLA fuses into one pass: a batched einsum would
    run as B2 tiny [n, d] x [d, n] matmuls, several times slower on XLA:CPU."""
    n = len(left)
    dots = {(a, b): jnp.sum(left[a] * right[b], axis=-1) for a in range(n) for b in range(a, n)}
    return jnp.stack([jnp.stack([dots[min(a, b), max(a, b)] for b in range(n)], -1) for a in range(n)], -2)


def _determinant_and_adjugate(gram):
    # Materialised per candidate: fused into the [B1, B2] sweeps, XLA would recompute
    # these (k-1) x (k-1) cofactor polynomials for every anchor.
    return jax.lax.optimization_barrier((symmetric_determinant(gram), symmetric_adjugate(gram)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _volume_infonce(anchor, modalities, temperature, label_smoothing):
    """(symmetric_cross_entropy(-V / tau), V) from anchors `[B1, d]` and a tuple of n
    modality arrays `[B2, d]`, L2-normalised here (so that the jvp rule writes the
    normalisation's derivative too). V is given no derivative (its tangent is zero)."""
    anchor, _, _, anchor_gram = common.unit_and_inverse_norm(anchor)
    modalities = tuple(common.l2_normalize(m) for m in modalities)
    candidate_det, adjugate = _determinant_and_adjugate(_symmetric_row_dots(modalities, modalities))
    cosines = [anchor @ modality.T for modality in modalities]
    volume = jnp.sqrt(jnp.maximum(pair_determinant(cosines, candidate_det, adjugate, anchor_gram[:, 0]), 0.0))
    return common.symmetric_cross_entropy(-volume / temperature, label_smoothing), volume


@_volume_infonce.defjvp
def _volume_infonce_jvp(label_smoothing, primals, tangents):
    # The whole gradient is formed with the primal (it is what a backward pass needs: the
    # transpose of <gradient, tangent> is a scaling), so forward and reverse mode share it.
    # The logits -V / tau lie in [-1/tau, 0], so when 1/(2 tau) <= FIXED_SHIFT_LIMIT their
    # softmaxes can all be shifted by the middle, -1/(2 tau) (XLA drops the test for a
    # constant temperature; a learned one is clipped well above 1/120 by default).
    temperature = primals[2]
    loss, gradients, volume = jax.lax.cond(
        0.5 / temperature <= common.FIXED_SHIFT_LIMIT,
        functools.partial(_loss_and_gradients, label_smoothing=label_smoothing, fixed_shift=True),
        functools.partial(_loss_and_gradients, label_smoothing=label_smoothing, fixed_shift=False),
        *primals,
    )
    tangent = sum(
        jnp.sum(gradient * direction)
        for gradient, direction in zip(jax.tree.leaves(gradients), jax.tree.leaves(tangents), strict=True)
    )
    return (loss, volume), (tangent, jnp.zeros_like(volume))


def _loss_and_gradients(anchor, modalities, temperature, *, label_smoothing, fixed_shift):
    """The loss, its gradient with respect to each input of `_volume_infonce`, and the
    volumes, in the
    three products [B1, d] x [d, B2] per modality that any such loss needs (forward, and
    two in the backward pass) and a few fused sweeps over [B1, B2].

    With c_a = anchor m_a^T, det = s det M - sum_ab adj_ab c_a c_b (s = |anchor|^2, 1
    above the normalisation's floor), V = sqrt(det), logits = -V / tau,
    P = d loss / d logits and g = d loss / d det = -P / (2 tau V):
        d loss / d c_a     = -sum_b S_ab w_b,  S = adj + adj^T,  w_b = g * c_b
        d loss / d anchor  = -sum_b w_b (sum_a S_ab m_a)
        d loss / d m_a,j   = -sum_b S_ab,j p_b,j,                p_b = w_b^T anchor
        d loss / d adj_ab,j = -sum_i w_a,ij c_b,ij = -<p_a,j, m_b,j>
        d loss / d det M_j = sum_i g_ij s_i,  d loss / d s_i = sum_j g_ij det M_j
        d loss / d tau     = sum P V / tau^2
    (d / d adj because c_b,ij = <anchor_i, m_b,j>: the reduction over i is the product p_a
    already formed, not another sweep over [B1, B2]); det M and adj M reach the m_a through
    autodiff of their closed forms. The inputs are L2-normalised here, and the gradients
    carried back through x -> x / |x|.

    With `fixed_shift` (valid when 1/(2 tau) <= common.FIXED_SHIFT_LIMIT) the softmaxes of
    both directions come from one exp per logit (`scaled_symmetric_cross_entropy_and_gradient`).
    """
    n = len(modalities)
    anchor, anchor_inverse_norm, anchor_above_floor, anchor_gram = common.unit_and_inverse_norm(anchor)
    modalities, inverse_norms, above_floor, _ = zip(*(common.unit_and_inverse_norm(m) for m in modalities))
    candidate_gram = _symmetric_row_dots(modalities, modalities)  # M_j
    (candidate_det, adjugate), candidate_vjp = jax.vjp(_determinant_and_adjugate, candidate_gram)
    cosines = [anchor @ modality.T for modality in modalities]
    volume = jnp.sqrt(jnp.maximum(pair_determinant(cosines, candidate_det, adjugate, anchor_gram[:, 0]), 0.0))
    if fixed_shift:
        loss, volume_grad = common.scaled_symmetric_cross_entropy_and_gradient(
            volume, -1.0 / temperature, -0.5 / temperature, label_smoothing
        )
    else:
        logits = -volume / temperature
        loss, logits_grad = common.symmetric_cross_entropy_and_gradient(logits, label_smoothing)
        # V again from the logits, so that the [B1, B2] volumes are not kept beside them.
        volume = -temperature * logits
        volume_grad = -logits_grad / temperature
    # safe_sqrt's derivative: dV / d det = 1 / (2 sqrt(max(det, floor))), finite at alignment.
    root = jnp.maximum(volume, math.sqrt(common.SQRT_FLOOR))
    # Materialised once: otherwise XLA:CPU recomputes it (and in the max-shifted path the
    # softmaxes' exps) in each consumer.
    det_grad = jax.lax.optimization_barrier(volume_grad / (2.0 * root))
    # sum P V / tau^2 with V centred on its diagonal mean (P sums to 0, so the shift changes
    # nothing but float32 cancellation), written with det_grad so P is not formed again.
    centre = jnp.mean(jnp.diagonal(volume))
    temperature_grad = -(2.0 / temperature) * jnp.sum(det_grad * (volume - centre) * root)
    weighted = [det_grad * c for c in cosines]
    symmetric = adjugate + jnp.swapaxes(adjugate, -1, -2)
    mixed = [sum(symmetric[:, a, b, None] * modalities[a] for a in range(n)) for b in range(n)]
    anchor_grad = -sum(w @ m for w, m in zip(weighted, mixed, strict=True))
    # w^T anchor from a materialised w^T: XLA:CPU gives a product contracting both
    # operands' first axis to a slower matmul kernel than the standard product. In column
    # blocks: see `common.transpose_by_column_blocks`.
    projected = [jax.lax.optimization_barrier(common.transpose_by_column_blocks(w)) @ anchor for w in weighted]
    # <p_a,j, m_b,j> = sum_i g_ij c_a,ij c_b,ij is symmetric in a, b.
    adjugate_grad = -_symmetric_row_dots(projected, modalities)
    # sum_i g_ij s_i as a vector-matrix product, one pass over [B1, B2] (as a reduction of
    # s * g, XLA materialises s broadcast to [B1, B2] first).
    candidate_det_grad = anchor_gram[:, 0] @ det_grad
    # Through M_ab = <m_a, m_b>: d loss / d m_a += sum_b (dM_ab + dM_ba) m_b, with dM
    # materialised per candidate (the same reason as in `_determinant_and_adjugate`).
    (gram_grad,) = candidate_vjp((candidate_det_grad, adjugate_grad))
    gram_grad = jax.lax.optimization_barrier(gram_grad + jnp.swapaxes(gram_grad, -1, -2))
    # Through m_a = x_a / |x_a|: d loss / d x_a = (g_a - m_a <m_a, g_a>) / |x_a| for the
    # gradient g_a = sum_b dM_ab m_b - S_ab p_b with respect to m_a, whose radial part
    # <m_a, g_a> = sum_b dM_ab M_ab + S_ab dadj_ab comes from [B2, n, n] quantities already
    # formed (<m_a, p_b> = -dadj_ab, dadj being symmetric), not from another sweep over [B2, d].
    radial = jnp.sum(gram_grad * candidate_gram + symmetric * adjugate_grad, axis=-1)
    radial = jnp.where(jnp.concatenate(above_floor, axis=-1), radial, 0.0)
    modality_grads = tuple(
        inverse_norms[a]
        * sum(
            (gram_grad[:, a, b, None] - (radial[:, a, None] if a == b else 0.0)) * modalities[b]
            - symmetric[:, a, b, None] * projected[b]
            for b in range(n)
        )
        for a in range(n)
    )
    # Above the floor s = 1 and the gradient loses its radial part; below it, s = |x|^2 /
    # NORM_FLOOR adds (2 x / NORM_FLOOR) d loss / d s = 2 anchor / |x| * d loss / d s.
    anchor_radial = jnp.where(
        anchor_above_floor,
        jnp.sum(anchor * anchor_grad, axis=-1, keepdims=True),
        -2.0 * (det_grad @ candidate_det)[:, None],
    )
    anchor_grad = (anchor_grad - anchor * anchor_radial) * anchor_inverse_norm
    return loss, (anchor_grad, modality_grads, temperature_grad), volume
