"""The BERT-family text tower loaded from local weights (pmrl_jax.models.pretrained)."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pmrl_jax.models import pretrained
from tests.checkpoints import minilm_checkpoint

REFERENCE = Path(__file__).parent / "fixtures" / "minilm_reference.npz"


@pytest.fixture(scope="module")
def minilm():
    return pretrained.load_text_encoder(minilm_checkpoint())


def _cosines(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("batch_size", [64, 5])
def test_embeddings_equal_sentence_transformers_on_the_same_weights(minilm, batch_size):
    """The reference vectors come from sentence-transformers (PyTorch) on the same
    checkpoint (scripts/text_tower_reference.py). Batch 64 holds every sentence in one
    batch padded to the 256-token limit; batch 5 pads each batch to its own length."""
    encoder, tokenizer = minilm
    reference = np.load(REFERENCE)
    ours = pretrained.embed_texts(encoder, tokenizer, [str(s) for s in reference["sentences"]], batch_size=batch_size)
    assert ours.dtype == np.float32 and ours.shape == reference["embeddings"].shape
    cosines = _cosines(ours, reference["embeddings"])
    assert cosines.min() >= 0.9999, (cosines.argmin(), cosines.min())
    np.testing.assert_allclose(ours, reference["embeddings"], atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # the checkpoint's Normalize module


def test_the_checkpoints_pooling_length_and_normalisation_are_read(minilm):
    encoder, tokenizer = minilm
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("mean", True, 256)
    assert tokenizer.vocab_size == encoder.bert.config.vocab_size == 30522
    ids = tokenizer(["word " * 300, "", "two words"])
    assert ids.shape == (3, 256) and ids.dtype == np.int32  # truncated to max_seq_length
    assert ids[1, :2].tolist() == [101, 102] and not ids[1, 2:].any()  # [CLS] [SEP], then padding (id 0)
    assert tokenizer(["two words"]).shape == (1, 16)  # padded to a multiple of 16
    with pytest.raises(TypeError, match="list of texts"):
        tokenizer("one string")


def test_padding_does_not_change_a_texts_tokens_or_embedding(minilm):
    encoder, tokenizer = minilm
    short = tokenizer(["a short text"], pad_to=16)
    long = tokenizer(["a short text"], pad_to=48)
    tokens_short, pooled_short = encoder(jnp.asarray(short))
    tokens_long, pooled_long = encoder(jnp.asarray(long))
    np.testing.assert_allclose(pooled_long, pooled_short, atol=1e-6)
    real = int((short != 0).sum())
    np.testing.assert_allclose(tokens_long[:, :real], tokens_short[:, :real], atol=1e-5)


def test_each_pooling_mode_against_numpy():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 5, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    for mode, expected in {
        "mean": [hidden[i, mask[i]].mean(0) for i in range(3)],
        "max": [hidden[i, mask[i]].max(0) for i in range(3)],
        "cls": hidden[:, 0],
    }.items():
        np.testing.assert_allclose(pretrained.pool(jnp.asarray(hidden), jnp.asarray(mask), mode), np.stack(expected),
                                   rtol=1e-6)
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        pretrained.pool(jnp.asarray(hidden), jnp.asarray(mask), "median")


def test_fine_tuning_gradients_reach_every_weight_and_dropout_needs_rngs(minilm):
    """Through the jitted gradient of a similarity, every parameter of the tower gets a
    finite, nonzero gradient but the embedding rows of tokens the batch does not contain
    and of the padding token (masked out of attention and pooling); dropout acts only
    when given rngs."""
    encoder, tokenizer = minilm
    ids = jnp.asarray(tokenizer(["a man plays a guitar", "a woman plays a violin"]))

    @nnx.jit
    def similarity_and_grad(model):
        def objective(model):
            pooled = model(ids)[1]
            return pooled[0] @ pooled[1]
        return nnx.value_and_grad(objective)(model)

    value, grads = similarity_and_grad(encoder)
    assert 0 < float(value) < 1
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == 5 + 16 * encoder.bert.config.num_hidden_layers
    for path, gradient in leaves:
        gradient = np.asarray(gradient)
        assert np.isfinite(gradient).all(), path
        if "word_embeddings" in jax.tree_util.keystr(path):
            used = np.setdiff1d(np.unique(np.asarray(ids)), [tokenizer.pad_id])
            assert (ids == tokenizer.pad_id).any()
            assert np.abs(gradient[used]).sum(1).min() > 0 and not np.delete(gradient, used, axis=0).any()
        elif "token_type" in jax.tree_util.keystr(path):
            assert np.abs(gradient[0]).sum() > 0 and not gradient[1].any()
        else:
            assert np.abs(gradient).max() > 0, path
    deterministic = [np.asarray(encoder(ids)[1]) for _ in range(2)]
    np.testing.assert_array_equal(*deterministic)
    dropped = np.asarray(encoder(ids, rngs=nnx.Rngs(dropout=1))[1])
    assert np.abs(dropped - deterministic[0]).max() > 1e-3


def test_bfloat16_compute_stays_close_to_float32(minilm):
    encoder, tokenizer = minilm
    reference = np.load(REFERENCE)
    sentences = [str(s) for s in reference["sentences"][:8]]
    low = pretrained.load_text_encoder(minilm_checkpoint(), dtype=jnp.bfloat16)[0]
    assert low.bert.layers[0].query.kernel[...].dtype == jnp.float32  # the weights stay float32
    cosines = _cosines(pretrained.embed_texts(low, tokenizer, sentences), reference["embeddings"][:8])
    assert cosines.min() > 0.99


def _copy_checkpoint(tmp_path, drop=()):
    """A copy of the checkpoint's small files with the weights linked, less `drop`."""
    source, target = minilm_checkpoint(), tmp_path / "checkpoint"
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "modules.json", "sentence_bert_config.json"):
        if name not in drop:
            shutil.copy(source / name, target / name)
    shutil.copytree(source / "1_Pooling", target / "1_Pooling")
    if "model.safetensors" not in drop:
        (target / "model.safetensors").symlink_to(source / "model.safetensors")
    return target


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_missing_file_is_named(tmp_path, missing):
    checkpoint = _copy_checkpoint(tmp_path, drop=(missing,))
    with pytest.raises(FileNotFoundError, match=f"{checkpoint / missing} not found"):
        pretrained.load_text_encoder(checkpoint)


def _edit_config(checkpoint, **changes):
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(changes)
    (checkpoint / "config.json").write_text(json.dumps(config))


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    checkpoint = _copy_checkpoint(tmp_path)
    _edit_config(checkpoint, model_type="roberta")
    with pytest.raises(ValueError, match="model_type 'roberta' is not a BERT-family checkpoint"):
        pretrained.load_text_encoder(checkpoint)
    _edit_config(checkpoint, model_type="bert", num_hidden_layers=7)
    with pytest.raises(ValueError, match="16 weights are missing, e.g. encoder.layer.6.attention.self.query.weight"):
        pretrained.load_text_encoder(checkpoint)
    _edit_config(checkpoint, num_hidden_layers=6, intermediate_size=1024)
    with pytest.raises(ValueError, match=r"encoder.layer.0.intermediate.dense.weight has shape \(384, 1536\)"):
        pretrained.load_text_encoder(checkpoint)


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path):
    checkpoint = _copy_checkpoint(tmp_path)
    _edit_config(checkpoint, vocab_size=1000)
    with pytest.raises(ValueError, match="has 30522 tokens, more than the 1000 rows of the embedding table"):
        pretrained.load_text_encoder(checkpoint)


def test_an_unsupported_pooling_is_refused(tmp_path):
    checkpoint = _copy_checkpoint(tmp_path)
    pooling = checkpoint / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps({"word_embedding_dimension": 384, "pooling_mode_mean_sqrt_len_tokens": True}))
    with pytest.raises(ValueError, match="is not one of mean, cls, max alone"):
        pretrained.load_text_encoder(checkpoint)
