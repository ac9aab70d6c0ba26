"""Per-device memory of the compiled loss step (forward + backward), blocked against
unblocked, on 1, 2, 4 and 8 fake CPU devices, in one run (compiled, never run):

    python benchmarks/scaling.py [--batches 4096,16384] [--dim 512] [--losses gram,clip,pmrl]

`compiled.memory_analysis().temp_size_in_bytes` of `jax.jit(jax.grad(loss))` with the
global batch [B, 3, d] sharded over the devices. The unblocked loss under GSPMD keeps
[B / n, B] scores per device; the blocked one (`pmrl_jax.losses.blocked`) passes the
candidates round a ring and holds [B / n, B / n]. Target: blocked at 8 devices <= 1/6
of the 1-device figure.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from arguments import names_from, positive_int, positive_ints

LOSS_NAMES = ("gram", "clip", "pmrl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=positive_ints, default="4096,16384")
    parser.add_argument("--dim", type=positive_int, default=512)
    parser.add_argument("--losses", type=names_from(LOSS_NAMES), default="gram,clip,pmrl")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import jax
    import jax.numpy as jnp

    from pmrl_jax import losses as L
    from pmrl_jax import sharding
    from pmrl_jax.losses import blocked

    losses = {
        "gram": (lambda x: L.gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07),
                 lambda x: blocked.blocked_gram_contrastive_loss(x[:, 0], x[:, 1:], temperature=0.07)),
        "clip": (lambda x: L.anchored_infonce_loss(x, temperature=0.07),
                 lambda x: blocked.blocked_anchored_infonce_loss(x, temperature=0.07)),
        "pmrl": (lambda x: L.pmrl_loss(x), lambda x: blocked.blocked_pmrl_loss(x)),
    }

    def temp_mib(loss, mesh, batch) -> float:
        with jax.set_mesh(mesh):
            shard = sharding.batch_sharding(mesh)
            compiled = jax.jit(jax.grad(loss), in_shardings=shard, out_shardings=shard).lower(
                jax.ShapeDtypeStruct((batch, 3, args.dim), jnp.float32)).compile()
        return compiled.memory_analysis().temp_size_in_bytes / 2**20

    print(f"jax {jax.__version__}; per-device temporary MiB of jit(grad(loss)), k = 3, d = {args.dim}")
    print(f"{'loss':5s} {'B':>6s} {'devices':>7s} {'unblocked':>10s} {'blocked':>9s} {'blocked / 1-device':>19s}")
    for name in args.losses:
        unblocked, ring = losses[name]
        for batch in args.batches:
            one_device = None
            for devices in (1, 2, 4, 8):
                mesh = sharding.make_mesh(devices=jax.devices()[:devices])
                plain, ringed = temp_mib(unblocked, mesh, batch), temp_mib(ring, mesh, batch)
                one_device = plain if devices == 1 else one_device
                print(f"{name:5s} {batch:6d} {devices:7d} {plain:10.1f} {ringed:9.1f} "
                      f"{ringed / one_device:18.3f}x", flush=True)


if __name__ == "__main__":
    main()
