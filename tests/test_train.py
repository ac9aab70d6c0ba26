"""The training job end to end on the embedded data: a smoke run of every config, exact
resumption, the same loss curve on 1 and 8 devices, and checkpoints that restore onto
another mesh."""

import json
import os
import re
import struct

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

from configs_util import METHODS, load_config
from pmrl_jax import evaluation, sharding, train
from pmrl_jax.resolve import open_split


def _losses(workdir):
    """The training records of metrics.jsonl (the model selection's are left out)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [record for record in map(json.loads, f) if "loss" in record]


def _tensorboard_scalars(directory):
    """{(tag, step): value} from the TensorBoard event files in `directory`, read as
    TFRecords (u64 length, u32 crc, payload, u32 crc) of `Event` protos."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[value.tag, event.step] = value.simple_value
    return scalars


def _smoke(name, **overrides):
    config = load_config(name)
    config.log_every = 1
    for key, value in overrides.items():  # eval__rerank__top_k=10: config.eval.rerank.top_k = 10
        *sections, field = key.split("__")
        node = config
        for section in sections:
            node = node[section]
        node[field] = value
    return config


@pytest.mark.parametrize("name", METHODS)
def test_smoke_run_trains_evaluates_and_writes_the_workdir(name, tmp_path):
    trainer, state = train.train(_smoke(name, eval__rerank__top_k=10), str(tmp_path))
    config = trainer.config
    state, selection = train.selected_state(trainer, str(tmp_path))
    results = evaluation.evaluate(trainer, state, str(tmp_path), selection)
    k = len(config.data.modalities)
    table = results["evals"]["retrieval"]["any_to_any"]
    assert len(table) == k * (k - 1) + 1 and results["num_examples"] == 400
    assert all(0.0 <= row["R@1"] <= row["R@5"] <= row["R@10"] <= 1.0 for row in table.values())
    history = _losses(tmp_path)
    assert [r["step"] for r in history] == list(range(1, config.num_steps + 1))
    assert all(np.isfinite(r["loss"]) for r in history)
    if name in ("gram", "pmrl"):  # the matching head is on, after the warm start
        assert "matching_loss" in history[-1]
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    for record in history:
        for metric, value in record.items():
            if metric != "step":
                assert scalars[f"train/{metric}", record["step"]] == pytest.approx(value, rel=1e-6), metric
    # Model selection scored the final loss's first step (0: the initial model), then every 3.
    first = config.warm_start.steps if config.warm_start.loss else 0
    assert [step for step, _ in selection["history"]] == [first, 6] if first == 3 else [0, 3, 6]
    def best_after(step):  # the first step with the highest score up to `step`
        scores = [(score, -s) for s, score in selection["history"] if s <= step]
        return -max(scores)[1]

    # The newest two, and the best step each of them names (kept for a fallback to it).
    assert sorted(map(int, os.listdir(tmp_path / "checkpoints"))) == sorted({3, 6, best_after(3), best_after(6)})
    assert results["selection"]["best_step"] == selection["best_step"] == selection["step"]
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["evals"]["retrieval"]["any_to_any"]["mean"] == table["mean"]
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["loss"]["name"] == name
    for plot in ("retrieval_r1.png", "sigma1.png", "robustness.png", "training.png"):
        with open(tmp_path / plot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", plot
    expected = {"retrieval", "classification", "robustness"} | ({"rerank"} if name in ("gram", "pmrl") else set())
    assert set(results["evals"]) == expected
    assert results["evals"]["robustness"]["levels"] == list(config.eval.robustness.noise_levels)
    if name == "gram":
        _check_set_queries_rerank_and_eval_only_run(config, tmp_path, results)


def _check_set_queries_rerank_and_eval_only_run(config, workdir, results):
    evals = results["evals"]
    tables = evals["retrieval"]["set_queries"]
    assert list(tables) == list(config.eval.retrieval.set_similarities)
    assert all(list(table) == list(config.eval.retrieval.set_queries) for table in tables.values())
    directions = [d for d, value in evals["rerank"].items() if isinstance(value, dict)]
    assert directions == [config.eval.retrieval.set_queries[-2], config.eval.retrieval.set_queries[-1]]  # anchor->rest and back
    for direction in directions:
        rerank = evals["rerank"][direction]
        # The plain row is the set query's own retrieval (the same measure, volume, here);
        # re-ranking permutes the top K = 10 only, so as many true matches stay within 10.
        assert rerank["plain"] == tables[config.loss.similarity][direction]
        assert rerank["reranked"]["R@10"] == rerank["plain"]["R@10"]
    # --mode=eval's path: the workdir's checkpoints alone give the same results.
    restored_trainer = train.restoring_trainer(config, str(workdir))
    restored, record = train.selected_state(restored_trainer, str(workdir))
    assert evaluation.evaluate(restored_trainer, restored, str(workdir), record)["evals"] == evals


def test_resume_after_a_stop_continues_the_same_loss_curve(tmp_path):
    config = _smoke("gram")
    train.train(config, str(tmp_path / "straight"))
    train.train(config, str(tmp_path / "stopped"), stop_at=4)
    assert [r["step"] for r in _losses(tmp_path / "stopped")] == [1, 2, 3, 4]
    train.train(config, str(tmp_path / "stopped"))
    straight, resumed = _losses(tmp_path / "straight"), _losses(tmp_path / "stopped")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    # Same device layout, same batches, same keys: the curves agree to the bit.
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


@pytest.mark.parametrize("name", ["clip", "gram"])
def test_one_and_eight_devices_give_the_same_loss_curve(name, tmp_path):
    # The loss curves only; gram without its clip stage (clip's own case covers that).
    config = _smoke(name, eval__every=0, warm_start__steps=0)
    one = train.train(config, str(tmp_path / "one"), mesh=sharding.make_mesh(devices=jax.devices()[:1]))[0]
    eight = train.train(config, str(tmp_path / "eight"), mesh=sharding.make_mesh(data=4, fsdp=2))[0]
    assert one.mesh.size == 1 and eight.mesh.size == 8
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    # Float32 reductions split over devices sum in another order: agreement to 1e-5 relative.
    np.testing.assert_allclose([r["loss"] for r in a], [r["loss"] for r in b], rtol=1e-5)


def test_a_mesh_with_explicit_axes_trains_as_its_auto_twin(tmp_path):
    """`jax.make_mesh`'s default axis type on current JAX is Explicit, under which the step's
    unannotated ops fail at trace time; the trainer runs such a mesh's devices and names as
    Auto axes, so its curve is the Auto mesh's to the bit."""
    config = _smoke("clip")
    explicit = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Explicit,) * 2)
    trainer = train.train(config, str(tmp_path / "explicit"), stop_at=2, mesh=explicit)[0]
    train.train(config, str(tmp_path / "auto"), stop_at=2, mesh=sharding.make_mesh(data=4, fsdp=2))
    assert trainer.mesh.axis_types == (AxisType.Auto,) * 2
    assert trainer.mesh.axis_names == ("data", "fsdp") and (trainer.mesh.devices == explicit.devices).all()
    assert [r["loss"] for r in _losses(tmp_path / "explicit")] == [r["loss"] for r in _losses(tmp_path / "auto")]


def test_a_mesh_without_the_trainers_axes_is_refused_before_anything_is_written(tmp_path):
    config = _smoke("clip")
    for mesh, names in ((jax.make_mesh((8,), ("batch",), axis_types=(AxisType.Auto,)), "('batch',)"),
                        (jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2), "('data', 'model')")):
        with pytest.raises(ValueError, match=re.escape(f"needs exactly the axes ('data', 'fsdp'), got {names}")):
            train.train(config, str(tmp_path / "run"), mesh=mesh)
    with pytest.raises(TypeError, match="mesh must be a jax.sharding.Mesh, got tuple"):
        train.train(config, str(tmp_path / "run"), mesh=(4, 2))
    assert not (tmp_path / "run").exists()


def test_checkpoint_restores_onto_a_different_mesh(tmp_path):
    config = _smoke("clip", mesh__fsdp_min_size=1024)
    trainer, state = train.train(config, str(tmp_path), mesh=sharding.make_mesh(data=4, fsdp=2))
    sharded = [leaf for leaf in jax.tree.leaves(state) if not leaf.sharding.is_fully_replicated]
    assert sharded, "with fsdp=2 and a small threshold some parameters must be split"
    restored_trainer, restored = train.latest_state(config, str(tmp_path),
                                                    mesh=sharding.make_mesh(devices=jax.devices()[:1]))
    assert all(len(leaf.sharding.device_set) == 1 for leaf in jax.tree.leaves(restored))
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the restored model embeds like the trained one
    source = open_split(trainer.config, "test")
    embed_split = evaluation.embed_split
    np.testing.assert_allclose(embed_split(trainer, state, source, batch_size=64).embeddings,
                               embed_split(restored_trainer, restored, source, batch_size=64).embeddings,
                               rtol=1e-5, atol=1e-5)


def test_workdir_of_another_model_is_refused(tmp_path):
    train.train(_smoke("clip"), str(tmp_path))
    other = _smoke("clip", model__width=48)
    with pytest.raises(ValueError, match="config.model differs from this one in config.model.width"):
        train.train(other, str(tmp_path))


def test_bfloat16_compute_keeps_float32_parameters(tmp_path):
    config = _smoke("clip", model__dtype="bfloat16")
    trainer, state = train.train(config, str(tmp_path))
    params = jax.tree.leaves(nnx.state(trainer.model(state), nnx.Param))
    assert params and all(p.dtype == np.float32 for p in params)
    assert all(np.isfinite(r["loss"]) for r in _losses(tmp_path))
    hidden = trainer.model(state).encoders["pix"].layers[0](np.ones((2, 240), np.float32))
    assert hidden.dtype == jax.numpy.bfloat16
