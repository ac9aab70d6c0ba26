"""The matching head: GRAM's data-anchor matching (DAM, "ITM" in its code) and PMRL's
instance matching (IM). docs/math.md, "The matching head".

A cross-encoder reads the anchor modality's tokens, cross-attends to the concatenated
tokens of the other modalities, and a 2-way head (Linear, GELU, LayerNorm, Linear) on the
first token predicts match / no match. Each step scores 3B pairs: (a_i, data_i) positive;
(a_i, data_n) and (a_n, data_i) negative, with the hard negatives n drawn without
gradient from `softmax(S / tau) + 1e-4` (rows for anchor -> data, columns for data ->
anchor) with the positive zeroed, S being the training similarity (for GRAM S = -V, the
negated volume) and tau the contrastive temperature, as in GRAM's and PMRL's code. A
modality given as one feature vector is a single token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

NEGATIVE_SAMPLING_FLOOR = 1e-4


class CrossAttentionBlock(nnx.Module):
    """Pre-norm cross-attention from the anchor's tokens to the data tokens, then an MLP.
    The keys and values depend on the data alone (`keys_and_values`), so a batch of
    instances can compute them once and pair them with many anchors."""

    def __init__(self, width: int, heads: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.query_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.context_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(heads, width, dtype=dtype, decode=False, keep_rngs=False, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(width, 4 * width, dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * width, width, dtype=dtype, rngs=rngs)

    def queries(self, x):
        return self.attention.query(self.query_norm(x))

    def keys_and_values(self, context):
        context = self.context_norm(context)
        return self.attention.key(context), self.attention.value(context)

    def __call__(self, x, queries, keys_and_values):
        """x [P, n_a, w] and its projected `queries`, the paired data's keys and values."""
        attended = self.attention.attention_fn(queries, *keys_and_values, dtype=self.attention.dtype,
                                               precision=self.attention.precision)
        x = x + self.attention.out(attended)
        return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x))))


class MatchingHead(nnx.Module):
    """Token features of width `in_features` are first projected to the head's `width`.

    What depends on one instance alone is computed once per instance (`encode_anchor`:
    the anchor's projected tokens and first queries; `encode_data`: every block's keys
    and values), and `match` scores aligned rows of those encodings, so that scoring an
    instance against several others (the training step's 3B pairs, the re-ranker's top
    K) gathers encodings instead of re-projecting tokens."""

    def __init__(self, in_features: int, *, width: int = 128, heads: int = 4, depth: int = 1, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.anchor_in = nnx.Linear(in_features, width, dtype=dtype, rngs=rngs)
        self.data_in = nnx.Linear(in_features, width, dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([CrossAttentionBlock(width, heads, dtype=dtype, rngs=rngs) for _ in range(depth)])
        self.hidden = nnx.Linear(width, width, dtype=dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(width, 2, dtype=dtype, rngs=rngs)

    def encode_anchor(self, anchor_tokens) -> dict:
        """[B, n_a, in] -> {"x": [B, n_a, width], "queries": the first block's queries}."""
        x = self.anchor_in(anchor_tokens)
        return {"x": x, "queries": self.blocks[0].queries(x)}

    def encode_data(self, data_tokens) -> list:
        """[B, n_d, in] -> each block's (keys, values) of the data tokens."""
        context = self.data_in(data_tokens)
        return [block.keys_and_values(context) for block in self.blocks]

    def match(self, anchor: dict, data: list):
        """Match logits [P, 2] (index 1 = match) of row p of `anchor` with row p of `data`."""
        x, queries = anchor["x"], anchor["queries"]
        for i, (block, keys_and_values) in enumerate(zip(self.blocks, data, strict=True)):
            x = block(x, queries if i == 0 else block.queries(x), keys_and_values)
        return self.out(self.norm(jax.nn.gelu(self.hidden(x[:, 0])))).astype(jnp.float32)

    def __call__(self, anchor_tokens, data_tokens):
        """anchor_tokens [B, n_a, w], data_tokens [B, n_d, w] -> match logits [B, 2]
        (index 1 = match) of each row's anchor with the same row's data."""
        return self.match(self.encode_anchor(anchor_tokens), self.encode_data(data_tokens))


def sample_hard_negatives(scores: jax.Array, key: jax.Array, temperature=1.0) -> tuple[jax.Array, jax.Array]:
    """scores [B, B] (higher = more similar, query i vs candidate j). Returns, per row i, a
    candidate index != i, and per column j, a query index != j, drawn from
    softmax(scores / temperature) + 1e-4 with the positive excluded. No gradient flows
    through the scores or the temperature."""
    scores = jax.lax.stop_gradient(scores.astype(jnp.float32) / temperature)
    diagonal = jnp.eye(scores.shape[0], dtype=bool)
    row_key, column_key = jax.random.split(key)

    def draw(s, k):
        # By inverting each row's cumulative weights at one uniform number per row: the
        # distribution of jax.random.categorical without its B x B Gumbel draws. The
        # positive's weight is 0, so no uniform number falls in its (empty) interval.
        weights = jnp.where(diagonal, 0.0, jax.nn.softmax(s, axis=-1) + NEGATIVE_SAMPLING_FLOOR)
        cumulative = jnp.cumsum(weights, axis=-1)
        u = jax.random.uniform(k, (s.shape[0], 1)) * cumulative[:, -1:]
        return jnp.minimum(jnp.sum(cumulative <= u, axis=-1), s.shape[1] - 1)

    return draw(scores, row_key), draw(scores.T, column_key)


def matching_loss(head: MatchingHead, anchor_tokens, data_tokens, scores, key, temperature=1.0) -> jax.Array:
    """Mean 2-way cross-entropy over the 3B pairs (positive, hard negative data, hard
    negative anchor); the negatives drawn from softmax(scores / temperature). Each
    instance's tokens are encoded once and the encodings gathered for the pairs."""
    negative_data, negative_anchor = sample_hard_negatives(scores, key, temperature)
    b = anchor_tokens.shape[0]
    # Pairs (i, i), (i, n_i), (n'_i, i): only the negatives' third is gathered (a gather's
    # derivative is a scatter-add, slow on CPU).
    anchor = jax.tree.map(lambda t: jnp.concatenate([t, t, t[negative_anchor]]), head.encode_anchor(anchor_tokens))
    data = jax.tree.map(lambda t: jnp.concatenate([t, t[negative_data], t]), head.encode_data(data_tokens))
    labels = jnp.concatenate([jnp.ones(b, jnp.int32), jnp.zeros(2 * b, jnp.int32)])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(head.match(anchor, data), labels))
