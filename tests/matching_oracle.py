"""The matching head and its loss as first written: every pair's tokens gathered, then
projected and attended through flax's MultiHeadAttention. The test oracle of the
per-instance formulation in pmrl_jax/models/matching.py."""

import jax
import jax.numpy as jnp
import optax

from pmrl_jax.models.matching import sample_hard_negatives


def head_logits(head, anchor_tokens, data_tokens):
    x, context = head.anchor_in(anchor_tokens), head.data_in(data_tokens)
    for block in head.blocks:
        x = x + block.attention(block.query_norm(x), block.context_norm(context))
        x = x + block.mlp_out(jax.nn.gelu(block.mlp_in(block.mlp_norm(x))))
    return head.out(head.norm(jax.nn.gelu(head.hidden(x[:, 0])))).astype(jnp.float32)


def matching_loss(head, anchor_tokens, data_tokens, scores, key, temperature=1.0):
    negative_data, negative_anchor = sample_hard_negatives(scores, key, temperature)
    anchors = jnp.concatenate([anchor_tokens, anchor_tokens, anchor_tokens[negative_anchor]])
    data = jnp.concatenate([data_tokens, data_tokens[negative_data], data_tokens])
    b = anchor_tokens.shape[0]
    labels = jnp.concatenate([jnp.ones(b, jnp.int32), jnp.zeros(2 * b, jnp.int32)])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(head_logits(head, anchors, data), labels))
