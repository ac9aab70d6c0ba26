"""A materialised transpose on XLA:CPU: `.T` against `common.transpose_by_column_blocks`,
in one run.

    python benchmarks/transpose.py [--sizes 512,1024,2048] [--repeats 100]

Each function forms w = g * c `[n, 2n]` and returns it with its transpose behind an
`optimization_barrier`, as GRAM's backward pass does before its product `w^T anchor`
(B = n, k = 3 gives two such [n, n] matrices). Both transposes give the same values (the
script checks); the blocked one is the 3-d transpose [n, 2n / 128, 128] -> [2n / 128,
128, n], which XLA:CPU copies in one pass, while its layout assignment may split a 2-d
`.T` into a transpose and a copy (it does on jax 0.12). Prints the best and median time
of each, interleaved round by round, and their ratio.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arguments import positive_int, positive_ints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=positive_ints, default="512,1024,2048",
                        help="n of each [n, 2n] matrix; multiples of 4 use blocks, others fall back to .T")
    parser.add_argument("--repeats", type=positive_int, default=100)
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from losses import best_and_median, host_description, measure
    from pmrl_jax.losses.common import transpose_by_column_blocks

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {len(jax.devices())} device(s), "
          f"best and median of {args.repeats} interleaved runs; host: {host_description()}")
    print(f"{'shape':>12s} {'.T ms':>8s} {'blocks ms':>10s} {'.T/blocks':>10s}   (medians)")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        g, c = (jnp.asarray(rng.normal(size=(n, 2 * n)), jnp.float32) for _ in range(2))
        functions = {
            name: (jax.jit(lambda g, c, transpose=transpose: jax.lax.optimization_barrier(
                (lambda w: (w, transpose(w)))(g * c))), (g, c))
            for name, transpose in ((".T", lambda w: w.T), ("blocks", transpose_by_column_blocks))
        }
        outputs = {name: jax.device_get(fn(*inputs)) for name, (fn, inputs) in functions.items()}
        np.testing.assert_array_equal(outputs[".T"][1], outputs["blocks"][1])
        times = best_and_median(measure(functions, args.repeats))
        plain, blocked = times[".T"], times["blocks"]
        print(f"{f'[{n}, {2 * n}]':>12s} {plain[0] * 1e3:8.3f} {blocked[0] * 1e3:10.3f} {plain[0] / blocked[0]:9.2f}x   "
              f"({plain[1] * 1e3:.3f}, {blocked[1] * 1e3:.3f}, {plain[1] / blocked[1]:.2f}x)")


if __name__ == "__main__":
    main()
