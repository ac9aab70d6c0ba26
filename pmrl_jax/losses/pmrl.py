"""PMRL's principled multimodal alignment losses (docs/math.md, "PMRL")."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pmrl_jax.losses import common
from pmrl_jax.losses.explicit_axes import runs_in_auto_axes
from pmrl_jax.losses.spectral import spectrum


# Both losses are "logsumexp minus the largest logit", which is near 0 at the optimum.
# Written as log1p(sum of exp(logit - largest)) over the other logits they keep full
# relative precision there instead of cancelling two numbers of size 1 / tau.


def _alignment(singular: jax.Array, temperature) -> jax.Array:
    gaps = (singular[:, 1:] - singular[:, :1]) / temperature  # <= 0
    return jnp.mean(jnp.log1p(jnp.sum(jnp.exp(gaps), axis=-1)))


def _regularization(directions: jax.Array, temperature, groups: int = 1) -> jax.Array:
    # Within each of `groups` consecutive blocks of the batch (1: the whole batch).
    # <u_i, u_i> = 1 by construction, so the diagonal logit is exactly 1 / tau.
    blocks = directions.reshape(groups, directions.shape[0] // groups, directions.shape[-1])
    shifted = (jnp.einsum("gid,gjd->gij", blocks, blocks) - 1.0) / temperature  # <= 0 up to rounding
    off_diagonal = jnp.where(jnp.eye(shifted.shape[-1], dtype=bool), 0.0, jnp.exp(shifted))
    return jnp.mean(jnp.log1p(jnp.sum(off_diagonal, axis=-1)))


def _check_groups(x, groups) -> None:
    if not isinstance(groups, int) or groups < 1 or x.shape[0] % groups:
        raise ValueError(f"`regularization_groups` must be a positive integer that divides the batch of "
                         f"{x.shape[0]}; got {groups!r}")


def _check(x, temperatures):
    common.check_modalities(x, "x", min_k=2)
    common.check_batch(x, "x")
    for name, value in temperatures.items():
        common.check_temperature(value, name)


@runs_in_auto_axes("scalar")
def pmrl_alignment_loss(x: jax.Array, *, temperature: float | jax.Array = 0.05) -> jax.Array:
    """PMRL's alignment loss: the singular values of each instance as logits, target the largest.

        Z_i = L2-normalised rows of x[i]   ([k, d], one per modality)
        L_M = mean_i [ logsumexp_j(sigma_ij / tau1) - sigma_i1 / tau1 ]

    With unit rows 1 <= sigma_1 <= sqrt(k), with equality iff all modalities lie on one
    line, so minimising L_M aligns the modalities. tau1 = 0.05 for fine-tuning, 0.01 for
    pretraining in the paper.

    Source: Liu, Xia, Ng, Chua, "Principled Multimodal Representation Learning" (2025).
    Differences from its code: singular values come from the k x k Gram matrix (no SVD,
    no d x d factor), and their derivative stays finite when trailing singular values
    coincide (at alignment).

    Args:
      x: `[B, k, d]` embeddings, k >= 2.
      temperature: tau1 > 0.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from pmrl_jax import losses
        >>> aligned = jnp.ones((4, 3, 8))                  # sigma_1 = sqrt(3), the others 0
        >>> bool(losses.pmrl_alignment_loss(aligned) < 1e-6)
        True
        >>> x = jax.random.normal(jax.random.key(0), (4, 3, 8))
        >>> bool(losses.pmrl_alignment_loss(aligned) < losses.pmrl_alignment_loss(x))
        True
    """
    _check(x, {"temperature": temperature})
    singular, _ = spectrum(common.l2_normalize(x))
    return _alignment(singular, temperature)


@runs_in_auto_axes("scalar")
def pmrl_regularization_loss(x: jax.Array, *, temperature: float | jax.Array = 0.1,
                             groups: int = 1) -> jax.Array:
    """PMRL's instance-wise regulariser: repulsion between leading directions.

        u_i  = leading left singular vector of Z_i (unit, sign: sum_m <u_i, z_im> >= 0)
        L_M' = mean_i [ logsumexp_j(<u_i, u_j> / tau2) - 1 / tau2 ]

    j runs over the whole (global) batch, including i itself, or with `groups` = n over
    the same block of B / n consecutive instances as i. tau2 = 0.1 in the paper.

    Source: Liu et al. 2025 (as `pmrl_alignment_loss`). Differences from its code: the
    sign of u_i is fixed (torch.linalg.svd's arbitrary sign lets the repulsion pair
    instances anti-parallel), and j runs over the global batch where the paper's code
    repels within each device's batch (16 instances): `groups` = the number of devices,
    with the batch sharded over them in order, reproduces that.

    Args:
      x: `[B, k, d]` embeddings, k >= 2.
      temperature: tau2 > 0.
      groups: the number of consecutive blocks of the batch repelled within (divides B).

    Example:
      >>> import jax
      >>> from pmrl_jax import losses
      >>> x = jax.random.normal(jax.random.key(0), (8, 3, 16))
      >>> whole, halves = losses.pmrl_regularization_loss(x), losses.pmrl_regularization_loss(x, groups=2)
      >>> bool(halves < whole)  # fewer instances to repel from
      True
    """
    _check(x, {"temperature": temperature})
    _check_groups(x, groups)
    _, directions = spectrum(common.l2_normalize(x))
    return _regularization(directions, temperature, groups)


@runs_in_auto_axes("scalar")
def pmrl_loss(
    x: jax.Array,
    *,
    alignment_temperature: float | jax.Array = 0.05,
    regularization_temperature: float | jax.Array = 0.1,
    regularization_weight: float = 1.0,
    regularization_groups: int = 1,
) -> jax.Array:
    """L = L_M + regularization_weight * L_M' (see `pmrl_alignment_loss` and
    `pmrl_regularization_loss`, whose `groups` is `regularization_groups`), from a single
    eigen-decomposition per instance.

    The paper adds 0.1 * L_IM (instance matching head), which lives with the model.

    Example:
      >>> import jax
      >>> from pmrl_jax import losses
      >>> aligned = jax.numpy.ones((4, 3, 8))        # every modality the same vector
      >>> float(losses.pmrl_alignment_loss(aligned)) < 1e-6
      True
      >>> x = jax.random.normal(jax.random.key(0), (4, 3, 8))
      >>> total = losses.pmrl_loss(x)
      >>> parts = losses.pmrl_alignment_loss(x) + losses.pmrl_regularization_loss(x)
      >>> bool(abs(total - parts) < 1e-5)
      True
    """
    _check(x, {"alignment_temperature": alignment_temperature,
               "regularization_temperature": regularization_temperature})
    _check_groups(x, regularization_groups)
    singular, directions = spectrum(common.l2_normalize(x))
    return _alignment(singular, alignment_temperature) + regularization_weight * _regularization(
        directions, regularization_temperature, regularization_groups
    )
