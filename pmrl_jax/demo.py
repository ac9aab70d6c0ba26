"""A one-minute demonstration of `pmrl_jax.losses` on the embedded real dataset.

    python -m pmrl_jax.demo [--methods clip,gram,pmrl] [--steps 300]

One linear tower per view of UCI Multiple Features (six views of 2,000 handwritten
digits) maps into a shared 64-d space; each method's loss trains the towers from
scratch with Adam on the training split, and the test split (400 digits) is scored by
any-to-any retrieval: for every ordered pair of views, does the query's own digit rank
first (R@1) among the 400 candidates by cosine? Ties count against the model.

This stands in for the training job (`python -m pmrl_jax.main`, issue 4) until it
exists; it is not that job's model or protocol.
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pmrl_jax import losses as L
from pmrl_jax.data import uci_multiple_features as uci

TEMPERATURE = 0.07
METHODS = {
    "clip": lambda z: L.anchored_infonce_loss(z, temperature=TEMPERATURE),
    "gram": lambda z: L.gram_contrastive_loss(z[:, 0], z[:, 1:], temperature=TEMPERATURE),
    "pmrl": lambda z: L.pmrl_loss(z),
    "symile": lambda z: L.symile_loss(z, temperature=TEMPERATURE),
    "all_pairs": lambda z: L.all_pairs_infonce_loss(z, temperature=TEMPERATURE),
}


def embed(params, views):
    return jnp.stack([views[i] @ w for i, w in enumerate(params)], axis=1)  # [B, k, d]


def any_to_any_recall_at_1(z: np.ndarray) -> float:
    """Mean over ordered view pairs (q, c) of the fraction of queries whose own example
    scores strictly above every other candidate."""
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    recalls = []
    for q, c in itertools.permutations(range(z.shape[1]), 2):
        scores = z[:, q] @ z[:, c].T
        positives = np.diagonal(scores)
        better_or_tied = (scores >= positives[:, None]).sum(axis=1) - 1
        recalls.append(np.mean(better_or_tied == 0))
    return float(np.mean(recalls))


def train(method, train_views, steps, batch_size, dim, seed):
    key = jax.random.key(seed)
    keys = jax.random.split(key, len(train_views) + 1)
    params = [jax.random.normal(k, (v.shape[1], dim)) / np.sqrt(v.shape[1]) for k, v in zip(keys[1:], train_views)]
    optimizer = optax.adam(1e-3)
    state = optimizer.init(params)
    loss_fn = METHODS[method]
    n = train_views[0].shape[0]

    @jax.jit
    def step(params, state, indices):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(embed(p, [v[indices] for v in train_views])))(params)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    rng = np.random.default_rng(seed)
    loss = jnp.nan
    for _ in range(steps):
        params, state, loss = step(params, state, rng.choice(n, batch_size, replace=False))
    return params, float(loss)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="clip,gram,pmrl", help=f"comma-separated, from {sorted(METHODS)}")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")

    features, labels = uci.load()
    splits = uci.stratified_split(labels, seed=args.seed)
    train_views, test_views = [], []
    for name in uci.VIEWS:
        train_x, test_x = uci.standardize(features[name][splits["train"]], features[name][splits["test"]])
        train_views.append(jnp.asarray(train_x))
        test_views.append(jnp.asarray(test_x))
    print(f"UCI Multiple Features: {len(splits['train'])} train / {len(splits['test'])} test digits, "
          f"views {list(uci.VIEWS)}; jax {jax.__version__} on {jax.device_count()} {jax.default_backend()} device(s)")
    print(f"chance any-to-any R@1 = {1 / len(splits['test']):.4f}")
    print(f"{'method':10s} {'final loss':>10s} {'test R@1 (init)':>16s} {'test R@1 (trained)':>19s} {'seconds':>8s}")
    for method in methods:
        start = time.perf_counter()
        init, _ = train(method, train_views, 0, args.batch_size, args.dim, args.seed)
        params, loss = train(method, train_views, args.steps, args.batch_size, args.dim, args.seed)
        before = any_to_any_recall_at_1(np.asarray(embed(init, test_views)))
        after = any_to_any_recall_at_1(np.asarray(embed(params, test_views)))
        print(f"{method:10s} {loss:10.4f} {before:16.4f} {after:19.4f} {time.perf_counter() - start:8.1f}", flush=True)


if __name__ == "__main__":
    main()
