"""Time and memory of blocked, sharded retrieval scoring (pmrl_jax.evaluation.ranking), in one run:

    python benchmarks/eval.py [--sizes 10000,100000] [--dim 128] [--tile 1024] [--devices 8]

For each N: the wall time of any-to-any retrieval (6 ordered pairs of 3 modalities, cosine)
over N synthetic instances on the fake CPU devices, and the per-device temporary memory
of the compiled scoring program (`compiled.memory_analysis()`), blocked against an
unblocked program that scores the full N x N matrix on one device. The unblocked program
is compiled, never run, at sizes whose matrix would not fit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from arguments import positive_int, positive_ints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=positive_ints, default="10000,100000")
    parser.add_argument("--dim", type=positive_int, default=128)
    parser.add_argument("--tile", type=positive_int, default=1024)
    parser.add_argument("--devices", type=positive_int, default=8)
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import itertools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from pmrl_jax import losses as L
    from pmrl_jax import sharding
    from pmrl_jax.evaluation import ranking as scoring
    from pmrl_jax.evaluation.metrics import retrieval_metrics

    mesh = sharding.make_mesh()
    print(f"jax {jax.__version__}, {mesh.size} {jax.default_backend()} devices, d={args.dim}, tile={args.tile}")
    print(f"{'N':>8s} {'any-to-any s':>13s} {'blocked MiB/device':>19s} {'unblocked MiB':>14s} {'ratio':>7s}")
    for n in args.sizes:
        z = np.random.default_rng(0).standard_normal((n, 3, args.dim)).astype(np.float32)
        start = time.perf_counter()
        for q, c in itertools.permutations(range(3), 2):
            retrieval_metrics(scoring.diagonal_ranks(z[:, [q]], z[:, [c]], "cosine", mesh, tile=args.tile))
        seconds = time.perf_counter() - start

        tile = min(args.tile, -(-n // mesh.size))
        padded = -(-n // (mesh.size * tile)) * mesh.size * tile
        shape = jax.ShapeDtypeStruct((padded, 1, args.dim), jnp.float32)
        blocked = scoring.make_rank_function("cosine", mesh, n, tile).lower(shape, shape).compile()
        blocked_bytes = blocked.memory_analysis().temp_size_in_bytes

        def unblocked(queries, candidates):
            scores = L.get_similarity("cosine")(queries, candidates)
            return jnp.sum(~(scores < jnp.diagonal(scores)[:, None]), axis=1)

        full = jax.jit(unblocked).lower(jax.ShapeDtypeStruct((n, 1, args.dim), jnp.float32),
                                        jax.ShapeDtypeStruct((n, 1, args.dim), jnp.float32)).compile()
        unblocked_bytes = full.memory_analysis().temp_size_in_bytes
        print(f"{n:8d} {seconds:13.1f} {blocked_bytes / 2**20:19.1f} {unblocked_bytes / 2**20:14.1f} "
              f"{unblocked_bytes / max(blocked_bytes, 1):6.0f}x")


if __name__ == "__main__":
    main()
