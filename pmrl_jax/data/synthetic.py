"""Synthetic k-modality data with a known shared cause, deterministic by seed.

Each instance draws a class c and a latent z = mu_c + N(0, I) in R^latent_dim. Modality m
sees it through its own random two-layer map, x_m = tanh(z W1_m) W2_m / sqrt(hidden),
plus N(0, noise^2) per feature. The modalities of one instance therefore share exactly
their latent, and retrieval between them is learnable but not trivial.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def make_synthetic(
    num_examples: int,
    dims: Sequence[int],
    *,
    num_classes: int = 10,
    latent_dim: int = 16,
    hidden_dim: int = 64,
    noise: float = 0.1,
    class_separation: float = 2.0,
    seed: int = 0,
    instance_seed: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """`({"m0": [N, dims[0]], ...}, labels [N])`, float32 features, int32 labels.

    `seed` fixes the world (class means and the per-modality maps); `instance_seed`
    (default: `seed`) fixes which instances are drawn from it, so train and test splits
    of one world use the same `seed` and different `instance_seed`s.
    """
    instance_seed = seed if instance_seed is None else instance_seed
    if num_examples < 1 or len(dims) < 1 or min(dims) < 1 or num_classes < 1 or noise < 0:
        raise ValueError(
            f"synthetic data needs num_examples >= 1, k >= 1 positive dims, num_classes >= 1 and noise >= 0; "
            f"got num_examples={num_examples}, dims={list(dims)}, num_classes={num_classes}, noise={noise}"
        )
    world = np.random.default_rng(seed)
    means = class_separation * world.normal(size=(num_classes, latent_dim))
    maps = [
        (world.normal(size=(latent_dim, hidden_dim)) / np.sqrt(latent_dim), world.normal(size=(hidden_dim, d)))
        for d in dims
    ]
    rng = np.random.default_rng([seed, instance_seed, 1])
    labels = rng.integers(0, num_classes, size=num_examples).astype(np.int32)
    latent = means[labels] + rng.normal(size=(num_examples, latent_dim))
    features = {}
    for m, (first, second) in enumerate(maps):
        x = np.tanh(latent @ first) @ second / np.sqrt(hidden_dim)
        features[f"m{m}"] = (x + noise * rng.normal(size=x.shape)).astype(np.float32)
    return features, labels
