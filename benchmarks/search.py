"""Using a trained model, measured in one run:

    python benchmarks/search.py [--candidates 100000] [--queries 1000] [--dim 128] [--k 10] [--tile 1024]

1. Embedding: `Run.embed` of every modality of the embedded data's test split against the
   training job's compiled forward pass over the same rows (clip's model, initial
   parameters; examples/s, best of 5).
2. Search: top-k of `--queries` unit vectors among `--candidates` (`pmrl_jax.search`,
   cosine), queries/s and the compiled program's temporary memory per device, against
   one matmul of the same shape ([queries, d] x [d, candidates], the full score matrix),
   best of 5.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from arguments import positive_int  # noqa: E402


def best_seconds(fn, repeats: int = 5) -> float:
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def embedding(repeats: int) -> None:
    import jax
    import numpy as np

    from pmrl_jax.configs import load_config_file
    from pmrl_jax.data.pipeline import feature_statistics, read_batch
    from pmrl_jax.resolve import input_layout, open_split, prepare
    from pmrl_jax.run import Run
    from pmrl_jax.trainer import make_trainer

    prepared = prepare(load_config_file(str(ROOT / "configs" / "clip.py")))
    config = prepared.config
    trainer = make_trainer(config, prepared.shapes, statistics=feature_statistics(prepared.train,
                                                                                  config.data.modalities))
    state = trainer.init_state()
    run = Run(None, trainer, state, 0, {m: v["dtype"] for m, v in input_layout(prepared.train).items()})
    test = open_split(config, "test")
    batch = read_batch(test, np.arange(len(test)))
    inputs = {m: batch[m] for m in config.data.modalities}
    rows = (len(test) // config.data.eval_batch_size) * config.data.eval_batch_size
    forward = trainer.forward_fn()
    global_batch = trainer.global_batch({m: x[:rows] for m, x in inputs.items()})

    def trainer_forward():
        with jax.set_mesh(trainer.mesh):
            return forward(state, global_batch)[0]

    embed_s = best_seconds(lambda: run.embed({m: x[:rows] for m, x in inputs.items()}), repeats)
    forward_s = best_seconds(trainer_forward, repeats)
    print(f"embedding {rows} rows x {len(inputs)} modalities (clip's model, {jax.device_count()} device(s)):")
    print(f"  Run.embed           {rows / embed_s:10.0f} examples/s")
    print(f"  training forward    {rows / forward_s:10.0f} examples/s   (embed / forward: {forward_s / embed_s:.2f})")


def searching(candidates: int, queries: int, dim: int, k: int, tile: int, repeats: int) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from pmrl_jax.evaluation.ranking import _make_top_function
    from pmrl_jax.search import search
    from pmrl_jax.sharding import make_mesh

    mesh = make_mesh()
    rng = np.random.default_rng(0)
    index = rng.standard_normal((candidates, dim)).astype(np.float32)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    query = index[rng.choice(candidates, queries, replace=False)] + 0.1 * rng.standard_normal((queries, dim))
    query = (query / np.linalg.norm(query, axis=1, keepdims=True)).astype(np.float32)
    search_s = best_seconds(lambda: search(query, index, k=k, mesh=mesh, tile=tile)[1], repeats)
    q, c = jnp.asarray(query), jnp.asarray(index)
    matmul = jax.jit(lambda q, c: q @ c.T)
    matmul_s = best_seconds(lambda: matmul(q, c), repeats)
    query_tile = max(1, min(tile, -(-queries // mesh.size)))
    rows = -(-queries // (mesh.size * query_tile)) * mesh.size * query_tile
    columns = -(-candidates // min(tile, candidates)) * min(tile, candidates)
    shapes = (jax.ShapeDtypeStruct((rows, 1, dim), jnp.float32), jax.ShapeDtypeStruct((columns, 1, dim), jnp.float32))
    compiled = _make_top_function("cosine", mesh, candidates, k, min(tile, candidates), query_tile).lower(*shapes)
    temp = compiled.compile().memory_analysis().temp_size_in_bytes
    full = matmul.lower(q, c).compile().memory_analysis()
    print(f"search: top-{k} of {queries} queries among {candidates} x {dim} (cosine, tile {tile}, "
          f"{mesh.size} device(s)):")
    print(f"  pmrl_jax.search     {queries / search_s:10.0f} queries/s  {temp / 2**20:8.1f} MiB temporaries per device")
    print(f"  one matmul          {queries / matmul_s:10.0f} queries/s  "
          f"{(full.temp_size_in_bytes + full.output_size_in_bytes) / 2**20:8.1f} MiB (the score matrix)")
    print(f"  search / matmul time: {search_s / matmul_s:.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=positive_int, default=100_000)
    parser.add_argument("--queries", type=positive_int, default=1000)
    parser.add_argument("--dim", type=positive_int, default=128)
    parser.add_argument("--k", type=positive_int, default=10)
    parser.add_argument("--tile", type=positive_int, default=1024)
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args(argv)
    import jax

    print(f"jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} device(s)")
    embedding(args.repeats)
    searching(args.candidates, args.queries, args.dim, args.k, args.tile, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
