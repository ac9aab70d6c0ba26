"""A small features directory with raw-text views, and the tiny BERT checkpoint whose
tokenizer covers its words: instance (i, j) of 16 x 16 is written "colour_i animal_j" in
view `words`, "c<i> a<j>" in view `codes` (the same instance in other tokens, which an
untrained tower does not relate), and a noisy vector of (i, j) in view `vector`."""

import json

import numpy as np

from checkpoints import write_tiny_bert
from pmrl_jax.data.features import write_split

COLOURS = ("red", "green", "blue", "yellow", "black", "white", "pink", "brown", "grey", "orange", "purple", "gold",
           "silver", "cyan", "teal", "olive")
ANIMALS = ("fox", "dog", "cat", "owl", "bee", "elk", "eel", "ant", "bat", "cow", "pig", "rat", "yak", "emu", "ape",
           "hen")
SIZES = {"train": 256, "validation": 64, "test": 64}
CODES = tuple(f"c{i}" for i in range(16)) + tuple(f"a{j}" for j in range(16))


def write_text_views(directory, checkpoint_directory, seed: int = 0):
    """The dataset under `directory` (`words` as .txt, `codes` as .jsonl, `vector` as
    .npy) and the checkpoint under `checkpoint_directory`; returns both paths."""
    rng = np.random.default_rng(seed)
    embedding = rng.standard_normal((32, 16))
    for split, n in SIZES.items():
        pairs = rng.integers(0, 16, size=(n, 2))
        words = [f"{COLOURS[i]} {ANIMALS[j]}" for i, j in pairs]
        codes = [f"c{i} a{j}" for i, j in pairs]
        vector = embedding[pairs[:, 0]] + embedding[16 + pairs[:, 1]] + 0.3 * rng.standard_normal((n, 16))
        write_split(directory, split, {"vector": vector.astype(np.float32)}, labels=pairs[:, 0])
        (directory / split / "words.txt").write_text("".join(f"{line}\n" for line in words))
        (directory / split / "codes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in codes))
    return directory, write_tiny_bert(checkpoint_directory, COLOURS + ANIMALS + CODES)
