"""Raw-text modalities as token ids, in the input pipeline.

`TokenizedSource` wraps a random-access source whose text modalities yield strings (a
features directory's `.txt` / `.jsonl` views) and turns each batch of strings into int32
token ids `[B, max_length]`, padded with the tokenizer's pad id to one fixed length, so
that the compiled step sees one shape. It runs where the batch is read: on grain's reader
threads during training, in the evaluation loop's reads otherwise; the training step
only ever sees ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np


class TokenizedSource:
    """`source` with the modalities of `tokenizers` ({modality: tokenizer}, each called as
    `tokenizer(list_of_texts, pad_to=max_length)` and having `.max_length`) tokenized."""

    def __init__(self, source, tokenizers: Mapping[str, Callable]):
        self.source = source
        self.tokenizers = dict(tokenizers)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {key: value[0] for key, value in self.read_batch(np.array([index])).items()}

    def read_batch(self, indices) -> dict[str, np.ndarray]:
        from pmrl_jax.data.pipeline import read_batch

        batch = read_batch(self.source, np.asarray(indices))
        batch.pop("index")
        for modality, tokenizer in self.tokenizers.items():
            texts = batch[modality]
            batch[modality] = tokenizer([str(text) for text in np.atleast_1d(texts)], pad_to=tokenizer.max_length)
        return batch

    @property
    def labels(self):
        return getattr(self.source, "labels", None)

    def __repr__(self) -> str:
        return f"TokenizedSource({self.source!r}, tokenized={sorted(self.tokenizers)})"
