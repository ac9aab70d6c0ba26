"""GRAM's volume-based contrastive loss (MATH.md section 2)."""

from __future__ import annotations

import jax

from pmrl_jax.losses import common
from pmrl_jax.losses.geometry import volume_matrix


def gram_contrastive_loss(
    anchor: jax.Array,
    others: jax.Array,
    *,
    temperature: float | jax.Array,
    label_smoothing: float = 0.1,
) -> jax.Array:
    """GRAM's symmetric volume InfoNCE.

        V[i, j] = Vol(a_i, m1_j, ..., m{k-1}_j)         (`volume_matrix`, unit rows)
        logits  = -V / tau
        L_vol   = 1/2 * (CE_ls(logits, diag) + CE_ls(logits^T, diag))

    CE_ls is softmax cross-entropy with label smoothing (0.1 in the official code) and
    the true pairs on the diagonal: rows rank candidates for each anchor, columns rank
    anchors for each candidate.

    Source: Cicchetti et al., "Gramian Multimodal Representation Learning and Alignment",
    ICLR 2025, and its official code (temperature initialised at 0.07, learnable).
    Differences from that code: the volume has a finite derivative at alignment (its
    `sqrt(abs(det))` has none), no [B, B, k, k] tensor is built, and under `jax.jit` with
    a sharded batch the loss and its gradient cover the global batch exactly.

    Args:
      anchor: `[B, d]` embeddings of the anchor modality (text in the paper).
      others: `[B, k-1, d]` embeddings of the other modalities, row i the same instance.
      temperature: tau > 0 (a Python float or a learned scalar).
      label_smoothing: in [0, 1).

    Returns:
      The scalar mean loss (float32).
    """
    common.check_rank(anchor, "anchor", 2, "[batch, d]")
    common.check_rank(others, "others", 3, "[batch, k - 1, d]")
    if anchor.shape[0] != others.shape[0]:
        raise ValueError(
            f"`anchor` and `others` must hold the same instances; got batch {anchor.shape[0]} and {others.shape[0]}"
        )
    common.check_temperature(temperature)
    common.check_label_smoothing(label_smoothing)
    logits = -volume_matrix(anchor, others) / temperature
    return common.symmetric_cross_entropy(logits, label_smoothing)
