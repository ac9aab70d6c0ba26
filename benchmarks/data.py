"""Throughput of the grain training pipeline, in examples/s, measured in one run:

    python benchmarks/data.py [--examples 1000000] [--dir /tmp/pmrl_jax_features] [--batches 200]

1. the embedded default (UCI Multiple Features, six views, in memory);
2. a synthetic set of `--examples` instances x 3 modalities x 512 float32 features in
   the bring-your-own `features` layout (memory-mapped .npy; about 6 GB for 1M, written
   once to --dir in chunks and reused).

Compare with the training step's examples/s (benchmarks/train_step.py): the pipeline
should deliver several times what the step consumes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from arguments import positive_int  # noqa: E402
from pmrl_jax.data import pipeline, registry  # noqa: E402
from pmrl_jax.data.features import FeaturesSource  # noqa: E402
from pmrl_jax.data.synthetic import make_synthetic  # noqa: E402

DIMS = (512, 512, 512)
CHUNK = 100_000


def write_features(directory: Path, examples: int) -> None:
    """Writes DIR/train/m{0,1,2}.npy chunk by chunk (each file renamed into place when whole)."""
    split = directory / "train"
    if all((split / f"m{m}.npy").exists() for m in range(3)) and np.load(split / "m0.npy", mmap_mode="r").shape[0] == examples:
        return
    split.mkdir(parents=True, exist_ok=True)
    partial = {m: np.lib.format.open_memmap(split / f"m{m}.npy.partial", mode="w+", dtype=np.float32, shape=(examples, d))
               for m, d in enumerate(DIMS)}
    for start in range(0, examples, CHUNK):
        n = min(CHUNK, examples - start)
        features, _ = make_synthetic(n, DIMS, seed=0, instance_seed=start)
        for m in range(3):
            partial[m][start : start + n] = features[f"m{m}"]
    for m, array in partial.items():
        array.flush()
        del array
        os.replace(split / f"m{m}.npy.partial", split / f"m{m}.npy")


def throughput(source, batch_size: int, batches: int) -> float:
    iterator = iter(pipeline.training_dataset(source, batch_size=batch_size, seed=0))
    for _ in range(5):  # warm up threads and caches
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=positive_int, default=1_000_000)
    parser.add_argument("--dir", default="/tmp/pmrl_jax_features")
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument("--batches", type=positive_int, default=200)
    args = parser.parse_args()

    uci = registry.make_source("uci_multiple_features", "train")
    rate = throughput(uci, args.batch_size, args.batches)
    print(f"uci_multiple_features (6 views, in memory): {rate:12,.0f} examples/s", flush=True)

    start = time.perf_counter()
    write_features(Path(args.dir), args.examples)
    print(f"features: {args.examples:,} x 3 x 512 float32 in {args.dir} ready in {time.perf_counter() - start:.1f} s", flush=True)
    source = FeaturesSource(args.dir, "train", ["m0", "m1", "m2"], check_finite=False)
    rate = throughput(source, args.batch_size, args.batches)
    print(f"features ({args.examples:,} x 3 x 512, memory-mapped): {rate:12,.0f} examples/s")


if __name__ == "__main__":
    main()
