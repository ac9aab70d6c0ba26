"""Pure, jit/vmap/grad-safe loss kernels and similarity measures for k-modality alignment.

Embeddings are `[..., k, d]` arrays, one row per modality. Loss functions L2-normalise
their inputs, compute in float32 (bfloat16 in, float32 out) and return a scalar mean.
Under `jax.jit` with the batch sharded over devices every loss covers the global batch
with exact gradients, on a mesh with Auto or Explicit axes (`explicit_axes.py`).
Formulas and sources: each function's docstring and docs/math.md.

This package imports only jax: no Flax, TFDS, grain or orbax.
"""

from pmrl_jax.losses.common import l2_normalize, safe_sqrt
from pmrl_jax.losses.eigh import symmetric_eigh
from pmrl_jax.losses.geometry import (
    gram_matrix,
    gram_volume,
    symmetric_adjugate,
    symmetric_determinant,
    volume_matrix,
)
from pmrl_jax.losses.gram import LOGITS as GRAM_LOGITS
from pmrl_jax.losses.gram import gram_contrastive_loss
from pmrl_jax.losses.infonce import all_pairs_infonce_loss, anchored_infonce_loss, cosine_matrix, infonce_loss
from pmrl_jax.losses.pmrl import pmrl_alignment_loss, pmrl_loss, pmrl_regularization_loss
from pmrl_jax.losses.similarity import (
    Similarity,
    get_similarity,
    register_similarity,
    similarity_names,
)
from pmrl_jax.losses.spectral import gram_spectrum, leading_direction, singular_values, spectrum
from pmrl_jax.losses.symile import mip_matrix, symile_loss
from pmrl_jax.losses.triangle import triangle_area_matrix, triangle_contrastive_loss

__all__ = [
    "GRAM_LOGITS",
    "Similarity",
    "all_pairs_infonce_loss",
    "anchored_infonce_loss",
    "cosine_matrix",
    "get_similarity",
    "gram_contrastive_loss",
    "gram_matrix",
    "gram_spectrum",
    "gram_volume",
    "infonce_loss",
    "l2_normalize",
    "leading_direction",
    "mip_matrix",
    "pmrl_alignment_loss",
    "pmrl_loss",
    "pmrl_regularization_loss",
    "register_similarity",
    "safe_sqrt",
    "similarity_names",
    "singular_values",
    "spectrum",
    "symile_loss",
    "symmetric_adjugate",
    "symmetric_determinant",
    "symmetric_eigh",
    "triangle_area_matrix",
    "triangle_contrastive_loss",
    "volume_matrix",
]
