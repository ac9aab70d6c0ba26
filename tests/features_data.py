"""A small features directory in the layout of pretrained embeddings: three views of a
shared latent, each a noisy unit vector of one width, train / validation / test splits."""

import numpy as np

from pmrl_jax.data.features import write_split

VIEWS = ("a", "b", "c")
SIZES = {"train": 512, "validation": 128, "test": 128}


def write_views(directory, width: int = 32, seed: int = 0, noise=(0.6, 0.8, 1.0), dtype=np.float32) -> None:
    rng = np.random.default_rng(seed)
    for split, n in SIZES.items():
        latent = rng.standard_normal((n, width))
        views = {}
        for view, level in zip(VIEWS, noise, strict=True):
            x = latent + level * rng.standard_normal((n, width))
            views[view] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)
        write_split(directory, split, views, labels=rng.integers(0, 4, n))


def frozen_mean_r1(directory, split: str) -> float:
    """Mean any-to-any R@1 of the unit inputs by cosine, ties against, in plain numpy."""
    x = [np.load(f"{directory}/{split}/{view}.npy").astype(np.float64) for view in VIEWS]
    recalls = []
    for q in range(len(x)):
        for c in range(len(x)):
            if q != c:
                scores = x[q] @ x[c].T
                recalls.append(np.mean((scores >= np.diag(scores)[:, None]).sum(axis=1) == 1))
    return float(np.mean(recalls))
