"""Encoders, one per kind of modality. Each maps a batch of raw inputs to a sequence of
tokens `[B, n, width]` (the matching head reads these) and a pooled vector `[B, width]`
(the projection head reads this).

    adapter      inputs that are already embeddings [B, D] -> one token, of the shared
                 width (no projection follows), starting as the identity
    mlp          feature vectors [B, D]                  -> one token
    transformer  token ids [B, T] (text; 0 = padding)    -> T tokens, mean-pooled over non-padding
    vit          images [B, H, W, C] or video [B, F, H, W, C] (frames encoded alike, then
                 averaged over time)                       -> patch tokens, mean-pooled
    audio        log-mel spectrograms [B, T, M]          -> time-frequency patch tokens, mean-pooled
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class MLPEncoder(nnx.Module):
    """`depth` x (Linear, GELU, dropout), then LayerNorm: [B, D] -> one token [B, 1, width]."""

    def __init__(self, in_features: int, *, width: int, depth: int = 1, dropout: float = 0.0,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if depth < 1:
            raise ValueError(f"mlp depth must be >= 1; got {depth}")
        sizes = [in_features] + [width] * depth
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        if x.ndim != 2:
            raise ValueError(f"the mlp encoder takes feature vectors [batch, features]; got shape {x.shape}")
        for layer in self.layers:
            x = self.dropout(jax.nn.gelu(layer(x)), deterministic=rngs is None, rngs=rngs)
        pooled = self.norm(x)
        return pooled[:, None, :], pooled


def isometry(shape: tuple[int, int], dtype) -> jax.Array:
    """[D, out]: the identity (D = out), [I 0] (D < out: an isometry), or a fixed random
    orthogonal projection (D > out). It depends on the shape alone, so every modality of
    one width gets the same map."""
    rows, columns = shape
    if rows <= columns:
        return jnp.eye(rows, columns, dtype=dtype)
    return jax.nn.initializers.orthogonal()(jax.random.key(0), shape, dtype)


class FeatureAdapter(nnx.Module):
    """For inputs that are already embeddings (a pretrained encoder's output):

        y = x A + b + MLP(x),   [B, D] -> one token [B, 1, out] and y [B, out]

    A starts as `isometry`, b at 0, and the residual MLP (`depth` hidden layers of
    `width`, GELU, dropout) ends in a zero-initialised layer, so at initialisation y = x
    (D = out) and the cosine between two modalities' outputs is their inputs' cosine
    (D <= out): training starts from the frozen inputs' retrieval. `depth` 0: linear only.
    """

    def __init__(self, in_features: int, *, out_features: int, width: int, depth: int = 1, dropout: float = 0.0,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if depth < 0:
            raise ValueError(f"adapter depth must be >= 0; got {depth}")
        self.linear = nnx.Linear(in_features, out_features, dtype=dtype, rngs=rngs,
                                 kernel_init=lambda key, shape, dtype: isometry(shape, dtype))
        sizes = [in_features] + [width] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.residual_out = (nnx.Linear(width, out_features, dtype=dtype, rngs=rngs,
                                        kernel_init=nnx.initializers.zeros_init()) if depth else None)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, *, rngs: nnx.Rngs | None = None):
        if x.ndim != 2:
            raise ValueError(f"the adapter encoder takes feature vectors [batch, features]; got shape {x.shape}")
        y = self.linear(x)
        if self.residual_out is not None:
            h = x
            for layer in self.hidden:
                h = self.dropout(jax.nn.gelu(layer(h)), deterministic=rngs is None, rngs=rngs)
            y = y + self.residual_out(h)
        return y[:, None, :], y


class TransformerBlock(nnx.Module):
    """Pre-norm self-attention block."""

    def __init__(self, width: int, heads: int, *, dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        self.attention_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(heads, width, dtype=dtype, decode=False, keep_rngs=False, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.mlp_in = nnx.Linear(width, 4 * width, dtype=dtype, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * width, width, dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, mask=None, *, rngs: nnx.Rngs | None = None):
        attention_mask = None if mask is None else nnx.make_attention_mask(mask, mask)
        drop = lambda y: self.dropout(y, deterministic=rngs is None, rngs=rngs)  # noqa: E731
        x = x + drop(self.attention(self.attention_norm(x), mask=attention_mask))
        return x + drop(self.mlp_out(jax.nn.gelu(self.mlp_in(self.mlp_norm(x)))))


class _TokenTransformer(nnx.Module):
    """Learned positions + a stack of blocks + a final norm, shared by the token encoders."""

    def __init__(self, max_tokens: int, width: int, depth: int, heads: int, dropout: float, dtype, rngs):
        self.positions = nnx.Param(jax.random.normal(rngs.params(), (max_tokens, width)) * 0.02)
        self.blocks = nnx.List([TransformerBlock(width, heads, dropout=dropout, dtype=dtype, rngs=rngs)
                                for _ in range(depth)])
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)

    def __call__(self, tokens, mask=None, *, rngs: nnx.Rngs | None = None):
        n = tokens.shape[-2]
        if n > self.positions.shape[0]:
            raise ValueError(f"{n} tokens exceed the encoder's max_tokens={self.positions.shape[0]}")
        x = tokens + self.positions[...][:n].astype(tokens.dtype)
        for block in self.blocks:
            x = block(x, mask, rngs=rngs)
        x = self.norm(x)
        if mask is None:
            return x, jnp.mean(x, axis=-2)
        weights = mask[..., None].astype(x.dtype)
        return x, jnp.sum(x * weights, axis=-2) / jnp.maximum(jnp.sum(weights, axis=-2), 1.0)


class TextTransformerEncoder(nnx.Module):
    def __init__(self, vocab_size: int, *, width: int, depth: int = 2, heads: int = 4, max_tokens: int = 128,
                 dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, width, dtype=dtype, rngs=rngs)
        self.transformer = _TokenTransformer(max_tokens, width, depth, heads, dropout, dtype, rngs)

    def __call__(self, token_ids, *, rngs: nnx.Rngs | None = None):
        if token_ids.ndim != 2 or not jnp.issubdtype(token_ids.dtype, jnp.integer):
            raise ValueError(f"the transformer encoder takes integer token ids [batch, tokens]; got "
                             f"{token_ids.dtype} {token_ids.shape}")
        return self.transformer(self.embed(token_ids), token_ids != 0, rngs=rngs)


def _patchify(x, patch: tuple[int, int]):
    """[B, H, W, C] -> [B, (H/p)(W/q), p*q*C]."""
    b, h, w, c = x.shape
    p, q = patch
    if h % p or w % q:
        raise ValueError(f"input {h}x{w} is not divisible into {p}x{q} patches")
    x = x.reshape(b, h // p, p, w // q, q, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // q), p * q * c)


class ViTEncoder(nnx.Module):
    def __init__(self, image_size: int, channels: int = 3, *, patch_size: int = 16, width: int, depth: int = 2,
                 heads: int = 4, dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        self.patch_size = patch_size
        self.patch_embed = nnx.Linear(patch_size * patch_size * channels, width, dtype=dtype, rngs=rngs)
        self.transformer = _TokenTransformer((image_size // patch_size) ** 2, width, depth, heads, dropout, dtype, rngs)

    def __call__(self, images, *, rngs: nnx.Rngs | None = None):
        if images.ndim == 5:  # video [B, F, H, W, C]: every frame alike, then mean over time
            b, f = images.shape[:2]
            tokens, pooled = self(images.reshape((b * f,) + images.shape[2:]), rngs=rngs)
            tokens = jnp.mean(tokens.reshape((b, f) + tokens.shape[1:]), axis=1)
            return tokens, jnp.mean(pooled.reshape(b, f, -1), axis=1)
        if images.ndim != 4:
            raise ValueError(f"the vit encoder takes images [B, H, W, C] or video [B, F, H, W, C]; got {images.shape}")
        return self.transformer(self.patch_embed(_patchify(images, (self.patch_size, self.patch_size))), rngs=rngs)


class AudioEncoder(nnx.Module):
    def __init__(self, num_frames: int, num_mel_bins: int, *, patch_size: tuple[int, int] = (16, 16), width: int,
                 depth: int = 2, heads: int = 4, dropout: float = 0.0, dtype=jnp.float32, rngs: nnx.Rngs):
        self.patch_size = tuple(patch_size)
        p, q = self.patch_size
        self.patch_embed = nnx.Linear(p * q, width, dtype=dtype, rngs=rngs)
        self.transformer = _TokenTransformer((num_frames // p) * (num_mel_bins // q), width, depth, heads, dropout,
                                             dtype, rngs)

    def __call__(self, spectrogram, *, rngs: nnx.Rngs | None = None):
        if spectrogram.ndim != 3:
            raise ValueError(f"the audio encoder takes log-mel spectrograms [B, frames, mel_bins]; got "
                             f"{spectrogram.shape}")
        return self.transformer(self.patch_embed(_patchify(spectrogram[..., None], self.patch_size)), rngs=rngs)
