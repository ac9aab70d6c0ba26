"""The pretrained text tower's throughput against sentence-transformers (PyTorch) on the
same weights, measured in one run:

    python benchmarks/text_tower.py CHECKPOINT [--batch 64] [--length 64] [--repeats 5] [--threads N]

CHECKPOINT is a sentence-transformers BERT directory (all-MiniLM-L6-v2: see
docs/performance.md for where to get it). For each side, sentences/s of the forward pass
(pooled embeddings) and of forward + backward (the gradient of the pooled embeddings'
sum with respect to every weight, as fine-tuning needs), on `--batch` texts of exactly
`--length` tokens, best of `--repeats`; JAX's compile time apart. PyTorch runs only if
`torch` and `sentence_transformers` are importable (not the project's dependencies), with
as many threads as XLA uses here unless --threads says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from arguments import positive_int  # noqa: E402


def best_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def token_ids(batch: int, length: int, vocab_size: int):
    """[CLS] random word pieces [SEP], every row exactly `length` tokens (no padding)."""
    import numpy as np

    ids = np.random.default_rng(0).integers(1000, vocab_size, size=(batch, length), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids


def jax_side(checkpoint: str, ids, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from pmrl_jax.models.pretrained import load_text_encoder

    encoder, _ = load_text_encoder(checkpoint)
    ids = jnp.asarray(ids)

    @nnx.jit
    def forward(model):
        return model(ids)[1]

    @nnx.jit
    def forward_backward(model):
        return nnx.grad(lambda m: jnp.sum(m(ids)[1]))(model)

    results = {}
    for name, fn in (("forward", forward), ("forward+backward", forward_backward)):
        start = time.perf_counter()
        jax.block_until_ready(fn(encoder))
        results[f"{name} compile"] = time.perf_counter() - start
        results[name] = best_seconds(lambda fn=fn: jax.block_until_ready(fn(encoder)), repeats)
    return results


def torch_side(checkpoint: str, ids, repeats: int, threads: int) -> dict[str, float] | None:
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    torch.set_num_threads(threads)
    model = SentenceTransformer(checkpoint, device="cpu")
    features = {"input_ids": torch.as_tensor(ids, dtype=torch.long),
                "attention_mask": torch.ones(ids.shape, dtype=torch.long),
                "token_type_ids": torch.zeros(ids.shape, dtype=torch.long)}

    def forward():
        model.eval()
        with torch.no_grad():
            return model(dict(features))["sentence_embedding"]

    def forward_backward():
        model.eval()  # dropout off, as on the JAX side
        model.zero_grad(set_to_none=True)
        model(dict(features))["sentence_embedding"].sum().backward()

    return {"forward": best_seconds(forward, repeats), "forward+backward": best_seconds(forward_backward, repeats)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--length", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count())
    args = parser.parse_args(argv)
    if args.length < 2:
        parser.error("--length must be at least 2 ([CLS] and [SEP])")
    import jax

    from pmrl_jax.models.pretrained import BertConfig

    config = BertConfig.from_file(Path(args.checkpoint) / "config.json")
    ids = token_ids(args.batch, args.length, config.vocab_size)
    print(f"text tower: {args.checkpoint}, {config.num_hidden_layers} layers x {config.hidden_size}; batch "
          f"{args.batch} x {args.length} tokens; jax {jax.__version__} on {jax.devices()[0].device_kind}, best of "
          f"{args.repeats}")
    ours = jax_side(args.checkpoint, ids, args.repeats)
    theirs = torch_side(args.checkpoint, ids, args.repeats, args.threads)
    for name in ("forward", "forward+backward"):
        line = (f"{name:>17}: jax {args.batch / ours[name]:8.1f} sentences/s ({ours[name] * 1e3:.1f} ms, compile "
                f"{ours[name + ' compile']:.1f} s)")
        if theirs:
            line += (f", torch {args.batch / theirs[name]:8.1f} sentences/s ({theirs[name] * 1e3:.1f} ms, "
                     f"{args.threads} threads); jax / torch speed: {theirs[name] / ours[name]:.2f}x")
        print(line)
    if theirs is None:
        print("torch / sentence_transformers not importable: the PyTorch side was not measured")


if __name__ == "__main__":
    main()
