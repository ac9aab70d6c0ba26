"""Raw text as a modality: text views in a features directory, tokenized in the input
pipeline, encoded by a pretrained tower that the training job locks or fine-tunes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs_util import load_config
from pmrl_jax import load, sharding, train
from pmrl_jax.configs import ConfigError
from pmrl_jax.data import features as F
from pmrl_jax.models.pretrained import load_text_encoder
from pmrl_jax.optimizer import make_optimizer
from pmrl_jax.resolve import open_split
from text_data import SIZES, write_text_views


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    return write_text_views(root / "data", root / "checkpoint")


def _config(data, checkpoint, **encoders):
    config = load_config("clip")
    config.data.name, config.data.options.directory = "features", str(data)
    config.model.encoders = {"vector": {"kind": "mlp"}} | {
        name: {"kind": "pretrained_text", "path": str(checkpoint)} | options for name, options in encoders.items()}
    config.data.batch_size = config.data.eval_batch_size = 32
    return config


def test_text_views_are_read_line_by_line(tmp_path):
    split = tmp_path / "train"
    F.write_split(tmp_path, "train", {"vector": np.zeros((3, 2), np.float32)})
    (split / "plain.txt").write_text("one\r\ntwo, with a comma\n\n")
    (split / "quoted.jsonl").write_text('"a"\n"line\\nbreak"\n""\n')
    (split / "records.jsonl").write_text('{"id": 1}\n')  # a table of records, not a view
    assert F.modalities_in(tmp_path) == ("plain", "quoted", "vector")
    source = F.FeaturesSource(tmp_path, "train", ["plain", "quoted", "vector"])
    assert list(source.read_batch(np.arange(3))["plain"]) == ["one", "two, with a comma", ""]
    assert list(source.read_batch(np.array([1, 2]))["quoted"]) == ["line\nbreak", ""]
    (split / "plain.txt").write_text("one\ntwo\n")
    with pytest.raises(F.FeaturesError, match=r"modality 'plain': .*plain\.txt has 2 lines but 'vector' has 3 rows"):
        F.FeaturesSource(tmp_path, "train", ["vector", "plain"])
    (split / "quoted.jsonl").write_text('"a"\n7\n"c"\n')
    with pytest.raises(F.FeaturesError, match=r"quoted\.jsonl line 2 holds a int, not a JSON string"):
        F.FeaturesSource(tmp_path, "train", ["quoted"])
    (split / "plain.npy").write_bytes((split / "vector.npy").read_bytes())
    with pytest.raises(F.FeaturesError, match="more than one file for modality 'plain'"):
        F.modalities_in(tmp_path)


def test_a_text_modality_needs_a_text_encoder_whose_files_exist(text_data, tmp_path):
    data, checkpoint = text_data
    config = _config(data, checkpoint, words={})
    config.data.modalities = ("codes", "vector", "words")
    with pytest.raises(ConfigError, match=r"modality 'codes' is raw text: give it a text encoder, "
                                          r"config.model.encoders.codes = \{kind: 'pretrained_text'"):
        open_split(config, "train")
    config = _config(data, tmp_path, words={}, codes={})
    config.data.modalities = ("codes", "vector", "words")
    with pytest.raises(ConfigError, match=rf"config.model.encoders.codes: {tmp_path}/config.json not found"):
        open_split(config, "train")
    config = _config(data, checkpoint, words={}, codes={"max_length": 1000})
    config.data.modalities = ("codes", "vector", "words")
    with pytest.raises(ConfigError, match=r"config.model.encoders.codes: max_length 1000 is outside \[2, 32\]"):
        open_split(config, "train")


def test_texts_become_fixed_length_token_ids_in_the_pipeline(text_data):
    data, checkpoint = text_data
    config = _config(data, checkpoint, words={"max_length": 8}, codes={})
    config.data.modalities = ("codes", "vector", "words")
    source = open_split(config, "test")
    batch = source.read_batch(np.arange(5))
    assert batch["words"].shape == (5, 8) and batch["codes"].shape == (5, 32) and batch["codes"].dtype == np.int32
    _, tokenizer = load_text_encoder(checkpoint)
    texts = (data / "test" / "words.txt").read_text().splitlines()[:5]
    np.testing.assert_array_equal(batch["words"], tokenizer(texts, pad_to=8))
    example = source[3]
    assert example["words"].shape == (8,) and example["vector"].shape == (16,) and example["label"].shape == ()
    np.testing.assert_array_equal(example["words"], batch["words"][3])
    np.testing.assert_array_equal(batch["vector"], np.load(data / "test" / "vector.npy")[:5])


def test_a_locked_encoder_gets_no_update_and_a_multiplier_scales_the_step():
    """Adam's first step is lr * g / (|g| + eps) per coordinate: with equal gradients, the
    encoder at multiplier 0.25 moves exactly a quarter as far as the rest of the model."""
    config = load_config("clip")
    config.data.modalities = ("a", "b", "c")
    config.model.encoders = {"a": {"trainable": False}, "b": {"learning_rate_multiplier": 0.25}}
    config.optimizer.grad_clip_norm = 0.0
    config.optimizer.warmup_steps = 0
    params = {"encoders": {m: {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)} for m in "abc"},
              "projections": {"a": {"kernel": jnp.ones((2, 2))}}}
    optimizer = make_optimizer(config)
    state = optimizer.init(params)
    grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
    updates, _ = optimizer.update(grads, state, params)
    assert not any(np.asarray(u).any() for u in jax.tree.leaves(updates["encoders"]["a"]))
    default = np.asarray(updates["encoders"]["c"]["bias"])  # no weight decay on biases
    assert np.abs(default).min() > 0
    np.testing.assert_allclose(updates["encoders"]["b"]["bias"], 0.25 * default, rtol=1e-6)
    np.testing.assert_allclose(updates["projections"]["a"]["kernel"], updates["encoders"]["c"]["kernel"])
    locked_state = [x for path, x in jax.tree_util.tree_leaves_with_path(state) if "'a'" in jax.tree_util.keystr(path)
                    and "encoders" in jax.tree_util.keystr(path)]
    assert not locked_state  # no Adam moments for a locked tower


def test_the_job_fine_tunes_one_tower_keeps_a_locked_one_and_learns(text_data, tmp_path):
    data, checkpoint = text_data
    config = _config(data, checkpoint, words={"trainable": False}, codes={"learning_rate_multiplier": 2.0})
    config.num_steps, config.eval.every = 30, 15
    config.mesh.fsdp, config.mesh.fsdp_min_size = 2, 4096  # the towers' larger weights split over fsdp
    train.train(config, str(tmp_path), mesh=sharding.make_mesh(fsdp=2, devices=jax.devices()[:2]))
    run = load(str(tmp_path))
    model = run.trainer.model(run.state)
    intermediate = model.encoders["codes"].bert.layers[0].intermediate.kernel[...]  # [32, 128]
    assert intermediate.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    pristine, tokenizer = load_text_encoder(checkpoint)
    same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))  # noqa: E731
    assert same(nnx.state(model.encoders["words"], nnx.Param), nnx.state(pristine, nnx.Param))
    assert not same(nnx.state(model.encoders["codes"], nnx.Param), nnx.state(pristine, nnx.Param))
    history = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    validation = [r["validation/mean_R@1"] for r in history if "validation/mean_R@1" in r]
    chance = 1 / SIZES["validation"]
    assert validation[0] < 3 * chance and max(validation) > 8 * chance, validation
    # A trained run embeds raw strings as training tokenized them.
    texts = (data / "test" / "words.txt").read_text().splitlines()[:4]
    from_strings = run.embed({"words": texts})["words"]
    from_ids = run.embed({"words": tokenizer(texts, pad_to=32)})["words"]
    np.testing.assert_allclose(from_strings, from_ids, atol=1e-6)
    assert from_strings.shape == (4, run.embed_dim)


def test_training_starts_from_the_towers_own_embeddings(text_data):
    """The projection of a pretrained tower starts as [I 0]: at initialisation the model's
    embedding of a text is the tower's own (unit) embedding, padded with zeros."""
    from pmrl_jax.models import MultimodalModel

    data, checkpoint = text_data
    model = MultimodalModel(("words", "vector"), {"words": (32,), "vector": (16,)},
                            {"words": {"kind": "pretrained_text", "path": str(checkpoint)}, "vector": {"kind": "mlp"}},
                            width=64, embed_dim=128, temperature=dict(initial=0.07, minimum=0.01, maximum=1.0),
                            matching=None, rngs=nnx.Rngs(0))
    pristine, tokenizer = load_text_encoder(checkpoint)
    texts = (data / "test" / "words.txt").read_text().splitlines()[:6]
    ids = jnp.asarray(tokenizer(texts, pad_to=32))
    z, _ = model({"words": ids, "vector": jnp.zeros((6, 16))})
    np.testing.assert_allclose(z[:, 0, :32], pristine(ids)[1], atol=1e-6)
    assert not np.asarray(z[:, 0, 32:]).any()
