"""Pretrained towers loaded from local files: a BERT-family text encoder (BERT, MiniLM and
other `BertModel` checkpoints) in Flax NNX.

A checkpoint is a directory in the Hugging Face layout:

    config.json           the architecture (model_type "bert")
    model.safetensors     the weights, read with the safetensors package's numpy API
    tokenizer.json        the tokenizer, read with the tokenizers package
    modules.json, 1_Pooling/config.json, sentence_bert_config.json
                          present for sentence-transformers checkpoints: the pooling
                          (mean, CLS or max over the non-padding tokens), whether the
                          result is L2-normalised, and the maximum sequence length

    encoder, tokenizer = load_text_encoder(path)
    vectors = embed_texts(encoder, tokenizer, ["a sentence", "another"])   # float32 [2, width]

The encoder is the post-LayerNorm transformer of BERT (Devlin et al., 2019): word +
position + token-type embeddings and a LayerNorm, then per layer
`x = LN(x + Attention(x))`, `x = LN(x + W2 GELU(W1 x))`, with attention over the
non-padding tokens only. Another architecture is a new module and a new name map in this
file (`_weight_names`); the loader around them stays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

POOLING_MODES = ("mean", "cls", "max")
# sentence-transformers' Pooling config: the flag of each mode pmrl_jax reads.
_POOLING_FLAGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                  "pooling_mode_max_tokens": "max"}
_ACTIVATIONS = {"gelu": lambda x: jax.nn.gelu(x, approximate=False),
                "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
                "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
                "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face `config.json` that the encoder reads."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    pad_token_id: int = 0

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        model_type = raw.get("model_type")
        if model_type != "bert":
            raise ValueError(f"{path}: model_type {model_type!r} is not a BERT-family checkpoint (model_type "
                             f"'bert'); this loader reads BERT and MiniLM checkpoints only")
        position_type = raw.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"{path}: position_embedding_type {position_type!r} is not supported (only 'absolute')")
        if raw.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise ValueError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported; known: "
                             f"{', '.join(_ACTIVATIONS)}")
        fields = {field.name for field in dataclasses.fields(cls)}
        config = cls(**{name: value for name, value in raw.items() if name in fields})
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"{path}: hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
                             f"{config.num_attention_heads}")
        return config


class BertLayer(nnx.Module):
    """One post-LayerNorm block: self-attention, then the feed-forward network, each
    added to its input and normalised."""

    def __init__(self, config: BertConfig, *, dtype, rngs: nnx.Rngs):
        width, eps = config.hidden_size, config.layer_norm_eps
        linear = lambda a, b: nnx.Linear(a, b, dtype=dtype, rngs=rngs)  # noqa: E731
        self.heads = config.num_attention_heads
        self.query, self.key, self.value = linear(width, width), linear(width, width), linear(width, width)
        self.attention_out = linear(width, width)
        self.attention_norm = nnx.LayerNorm(width, epsilon=eps, dtype=dtype, rngs=rngs)
        self.intermediate = linear(width, config.intermediate_size)
        self.output = linear(config.intermediate_size, width)
        self.output_norm = nnx.LayerNorm(width, epsilon=eps, dtype=dtype, rngs=rngs)
        self.activation = _ACTIVATIONS[config.hidden_act]
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)

    def __call__(self, x, attention_mask, *, rngs: nnx.Rngs | None = None):
        """x [B, T, width]; attention_mask bool [B, 1, 1, T], True where a key may be attended."""
        b, t, width = x.shape
        split = lambda y: y.reshape(b, t, self.heads, width // self.heads)  # noqa: E731
        attended = jax.nn.dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)),
                                                mask=attention_mask)
        drop = lambda y: self.dropout(y, deterministic=rngs is None, rngs=rngs)  # noqa: E731
        x = self.attention_norm(x + drop(self.attention_out(attended.reshape(b, t, width))))
        return self.output_norm(x + drop(self.output(self.activation(self.intermediate(x)))))


class BertEncoder(nnx.Module):
    """token ids [B, T] (and attention mask [B, T], True on real tokens) -> hidden states
    [B, T, width]. `dtype` is the compute dtype; the parameters stay float32."""

    def __init__(self, config: BertConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        width = config.hidden_size
        self.word_embeddings = nnx.Embed(config.vocab_size, width, dtype=dtype, rngs=rngs)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, width, dtype=dtype, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(config.type_vocab_size, width, dtype=dtype, rngs=rngs)
        self.embedding_norm = nnx.LayerNorm(width, epsilon=config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.embedding_dropout = nnx.Dropout(config.hidden_dropout_prob)
        self.layers = nnx.List([BertLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, token_ids, attention_mask=None, token_type_ids=None, *, rngs: nnx.Rngs | None = None):
        if token_ids.ndim != 2 or not jnp.issubdtype(token_ids.dtype, jnp.integer):
            raise ValueError(f"the text encoder takes integer token ids [batch, tokens]; got {token_ids.dtype} "
                             f"{token_ids.shape}")
        t = token_ids.shape[1]
        if t > self.config.max_position_embeddings:
            raise ValueError(f"{t} tokens exceed the checkpoint's max_position_embeddings="
                             f"{self.config.max_position_embeddings}")
        if attention_mask is None:
            attention_mask = token_ids != self.config.pad_token_id
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(token_ids)
        x = (self.word_embeddings(token_ids) + self.position_embeddings(jnp.arange(t))[None]
             + self.token_type_embeddings(token_type_ids))
        x = self.embedding_dropout(self.embedding_norm(x), deterministic=rngs is None, rngs=rngs)
        key_mask = attention_mask.astype(bool)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask, rngs=rngs)
        return x


def pool(hidden, attention_mask, mode: str):
    """[B, T, width] -> [B, width] over the tokens where `attention_mask` is True, as
    sentence-transformers' Pooling module does: the mean, the first (CLS) token, or the
    maximum."""
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.astype(bool)[..., None]
    if mode == "mean":
        weights = mask.astype(hidden.dtype)
        return jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
    if mode == "max":
        return jnp.max(jnp.where(mask, hidden, jnp.finfo(hidden.dtype).min), axis=1)
    raise ValueError(f"unknown pooling {mode!r}; known: {', '.join(POOLING_MODES)}")


class PretrainedTextEncoder(nnx.Module):
    """A BERT-family encoder with its checkpoint's pooling: token ids [B, T] (the
    checkpoint's pad id marks padding) -> (tokens [B, T, width], pooled [B, width]), the
    interface of `pmrl_jax.models.encoders`. `normalize` L2-normalises the pooled vector,
    as a sentence-transformers checkpoint with a Normalize module does. `trainable` False
    locks the tower in the training job (no gradient flows into it, its weights are not
    updated)."""

    def __init__(self, config: BertConfig, *, pooling: str = "mean", normalize: bool = False,
                 max_length: int | None = None, trainable: bool = True, dtype=jnp.float32, rngs: nnx.Rngs):
        if pooling not in POOLING_MODES:
            raise ValueError(f"unknown pooling {pooling!r}; known: {', '.join(POOLING_MODES)}")
        self.bert = BertEncoder(config, dtype=dtype, rngs=rngs)
        self.pooling, self.normalize, self.trainable = pooling, normalize, trainable
        self.max_length = min(max_length or config.max_position_embeddings, config.max_position_embeddings)

    @property
    def width(self) -> int:
        return self.bert.config.hidden_size

    def __call__(self, token_ids, *, rngs: nnx.Rngs | None = None):
        attention_mask = token_ids != self.bert.config.pad_token_id
        hidden = self.bert(token_ids, attention_mask, rngs=rngs)
        pooled = pool(hidden.astype(jnp.float32), attention_mask, self.pooling)
        if self.normalize:
            pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return hidden, pooled


class TextTokenizer:
    """A `tokenizers.Tokenizer` that truncates to `max_length` and returns int32 numpy ids
    padded with the pad id (to `pad_to`, or to the longest text rounded up to a multiple
    of `pad_multiple`, so that a jitted encoder compiles for few lengths)."""

    def __init__(self, tokenizer, *, max_length: int, pad_id: int, pad_multiple: int = 16):
        self.tokenizer = tokenizer
        self.max_length, self.pad_id, self.pad_multiple = max_length, pad_id, pad_multiple
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: Sequence[str], *, pad_to: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, not one string")
        encodings = self.tokenizer.encode_batch(list(texts))
        longest = max((len(e.ids) for e in encodings), default=1)
        length = pad_to or min(self.max_length, self.pad_multiple * math.ceil(longest / self.pad_multiple))
        ids = np.full((len(encodings), length), self.pad_id, np.int32)
        for row, encoding in zip(ids, encodings):
            row[:min(length, len(encoding.ids))] = encoding.ids[:length]
        return ids


def _weight_names(config: BertConfig) -> dict[tuple[str | int, ...], tuple[str, bool]]:
    """{path of a parameter in BertEncoder: (its name in a Hugging Face BERT checkpoint,
    whether the checkpoint stores it transposed, [out, in])}. LayerNorm weights may be
    stored as `weight`/`bias` or (older checkpoints) `gamma`/`beta`; `_read_weights`
    accepts either."""
    names = {
        ("word_embeddings", "embedding"): ("embeddings.word_embeddings.weight", False),
        ("position_embeddings", "embedding"): ("embeddings.position_embeddings.weight", False),
        ("token_type_embeddings", "embedding"): ("embeddings.token_type_embeddings.weight", False),
        ("embedding_norm", "scale"): ("embeddings.LayerNorm.weight", False),
        ("embedding_norm", "bias"): ("embeddings.LayerNorm.bias", False),
    }
    parts = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
             "attention_out": "attention.output.dense", "intermediate": "intermediate.dense",
             "output": "output.dense"}
    norms = {"attention_norm": "attention.output.LayerNorm", "output_norm": "output.LayerNorm"}
    for i in range(config.num_hidden_layers):
        for ours, theirs in parts.items():
            names[("layers", i, ours, "kernel")] = (f"encoder.layer.{i}.{theirs}.weight", True)
            names[("layers", i, ours, "bias")] = (f"encoder.layer.{i}.{theirs}.bias", False)
        for ours, theirs in norms.items():
            names[("layers", i, ours, "scale")] = (f"encoder.layer.{i}.{theirs}.weight", False)
            names[("layers", i, ours, "bias")] = (f"encoder.layer.{i}.{theirs}.bias", False)
    return names


def _read_weights(path: Path, encoder: BertEncoder) -> None:
    """Copies the checkpoint's arrays into `encoder`'s parameters; a missing or misshapen
    array is an error naming it."""
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    prefix = "bert." if any(name.startswith("bert.") for name in arrays) else ""
    legacy = {".LayerNorm.weight": ".LayerNorm.gamma", ".LayerNorm.bias": ".LayerNorm.beta"}
    missing = []
    for parameter_path, (name, transposed) in _weight_names(encoder.config).items():
        name = prefix + name
        if name not in arrays:
            old = next((name.replace(new, old) for new, old in legacy.items() if name.endswith(new)), None)
            if old is None or old not in arrays:
                missing.append(name)
                continue
            name = old
        parameter = encoder
        for part in parameter_path:
            parameter = parameter[part] if isinstance(part, int) else getattr(parameter, part)
        value = arrays[name].T if transposed else arrays[name]
        if value.shape != parameter.shape:
            raise ValueError(f"{path}: {name} has shape {value.shape} (as read), the architecture in config.json "
                             f"needs {parameter.shape}")
        parameter[...] = jnp.asarray(value, jnp.float32)
    if missing:
        raise ValueError(f"{path} is not a BERT checkpoint of the architecture config.json describes: "
                         f"{len(missing)} weights are missing, e.g. {', '.join(missing[:3])}")


def _sentence_transformers_options(directory: Path) -> dict:
    """Pooling, normalisation and maximum length from a sentence-transformers
    checkpoint's files; a plain BERT directory gets mean pooling, no normalisation."""
    options = {"pooling": "mean", "normalize": False, "max_length": None}
    modules_file = directory / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.exists() else []
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind == "Normalize":
            options["normalize"] = True
        elif kind == "Pooling":
            pooling = json.loads((directory / module["path"] / "config.json").read_text())
            flags = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value]
            if len(flags) != 1 or flags[0] not in _POOLING_FLAGS:
                raise ValueError(f"{directory / module['path'] / 'config.json'}: pooling {pooling} is not one of "
                                 f"{', '.join(POOLING_MODES)} alone")
            options["pooling"] = _POOLING_FLAGS[flags[0]]
        elif kind not in ("Transformer", ""):
            raise ValueError(f"{modules_file}: module {module.get('type')!r} is not supported (Transformer, Pooling "
                             f"and Normalize are)")
    bert_config = directory / "sentence_bert_config.json"
    if bert_config.exists():
        options["max_length"] = json.loads(bert_config.read_text()).get("max_seq_length")
    return options


def _checked_directory(path) -> Path:
    directory = Path(path)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name} not found: a text checkpoint directory holds config.json, "
                                    f"model.safetensors and tokenizer.json")
    return directory


def _tokenizer_of(directory: Path, config: BertConfig, options: dict, max_length: int | None) -> TextTokenizer:
    limit = min(options["max_length"] or config.max_position_embeddings, config.max_position_embeddings)
    if max_length is not None and not 2 <= max_length <= limit:
        raise ValueError(f"max_length {max_length} is outside [2, {limit}] (the checkpoint's limit)")
    from tokenizers import Tokenizer

    tokenizer = TextTokenizer(Tokenizer.from_file(str(directory / "tokenizer.json")), max_length=max_length or limit,
                              pad_id=config.pad_token_id)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{directory / 'tokenizer.json'} has {tokenizer.vocab_size} tokens, more than the "
                         f"{config.vocab_size} rows of the embedding table in {directory / 'config.json'}: "
                         f"the tokenizer belongs to another checkpoint")
    return tokenizer


def load_tokenizer(path, *, max_length: int | None = None) -> TextTokenizer:
    """The checkpoint's tokenizer alone (no weights read), truncating to `max_length`
    tokens, at most the checkpoint's own limit. Checks as `load_text_encoder` does."""
    directory = _checked_directory(path)
    return _tokenizer_of(directory, BertConfig.from_file(directory / "config.json"),
                         _sentence_transformers_options(directory), max_length)


def load_text_encoder(path, *, dtype=jnp.float32, dropout: float | None = None, max_length: int | None = None,
                      seed: int = 0) -> tuple[PretrainedTextEncoder, TextTokenizer]:
    """(encoder, tokenizer) from a local checkpoint directory (module docstring). `dtype`
    is the compute dtype (bfloat16 for training on an accelerator); the weights are
    float32. `dropout` replaces the checkpoint's hidden dropout rate (it acts only when
    the encoder is called with rngs). Raises FileNotFoundError naming a missing file and
    ValueError for a checkpoint of another architecture or a tokenizer whose ids exceed
    the embedding table."""
    directory = _checked_directory(path)
    config = BertConfig.from_file(directory / "config.json")
    options = _sentence_transformers_options(directory)
    tokenizer = _tokenizer_of(directory, config, options, max_length)
    if dropout is not None:
        config = dataclasses.replace(config, hidden_dropout_prob=dropout)
    encoder = PretrainedTextEncoder(config, dtype=dtype, rngs=nnx.Rngs(seed),
                                    **options | {"max_length": tokenizer.max_length})
    _read_weights(directory / "model.safetensors", encoder.bert)
    return encoder, tokenizer


@nnx.jit
def _embed_batch(encoder: PretrainedTextEncoder, token_ids):
    return encoder(token_ids)[1]


def embed_texts(encoder: PretrainedTextEncoder, tokenizer: TextTokenizer, texts: Sequence[str], *,
                batch_size: int = 64) -> np.ndarray:
    """float32 numpy [len(texts), width]: each text encoded and pooled as the checkpoint
    says, `batch_size` texts per jitted call (the last batch filled up with copies of
    its first text, so that no row is all padding)."""
    if isinstance(texts, str):
        raise TypeError("pass a list of texts, not one string")
    texts = list(texts)
    out = np.zeros((len(texts), encoder.width), np.float32)
    for start in range(0, len(texts), batch_size):
        chunk = texts[start:start + batch_size]
        ids = tokenizer(chunk)
        padded = np.repeat(ids[:1], batch_size, axis=0)
        padded[:len(chunk)] = ids
        out[start:start + len(chunk)] = np.asarray(_embed_batch(encoder, jnp.asarray(padded)))[:len(chunk)]
    return out
