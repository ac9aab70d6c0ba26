"""Bring-your-own features from the command line alone: the data decides the modalities,
the anchor and the encoder, training starts from the inputs (the identity adapter), the
step is chosen on validation, the frozen inputs are in every table, every shipped method
runs, and bad input is named in one line before anything is written."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs_util import CONFIG_DIR, METHODS, load_config, one_device_mesh
from features_data import VIEWS, frozen_mean_r1, write_views
from pmrl_jax import evaluation, train
from pmrl_jax.data.features import write_split

REPO = CONFIG_DIR.parent


def _main(*args, timeout=600):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run([sys.executable, "-m", "pmrl_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def views(tmp_path_factory):
    directory = tmp_path_factory.mktemp("views")
    write_views(directory)
    return directory


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_the_command_line_alone_trains_and_starts_from_the_inputs(views, tmp_path):
    result = _main("--config=configs/clip.py:smoke", "--config.data.name=features",
                   f"--config.data.options.directory={views}", "--config.num_steps=12", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    for chosen in ("modalities ['a', 'b', 'c'] (all the data has)", "anchor 'a' (the first modality)",
                   "encoder adapter", "embed_dim 32 (the width of the inputs)", "set queries ['a->b', 'a->b+c', 'b+c->a']"):
        assert chosen in first, first
    with open(tmp_path / "config.json") as f:
        saved = json.load(f)
    assert saved["data"]["modalities"] == list(VIEWS) and saved["model"]["encoder"]["kind"] == "adapter"
    # Step 0 is the identity adapter: its validation R@1 is the inputs' own.
    validation = [r for r in _records(tmp_path) if "validation/mean_R@1" in r]
    assert validation[0]["step"] == 0
    assert validation[0]["validation/mean_R@1"] == pytest.approx(frozen_mean_r1(views, "validation"), abs=1e-12)
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    frozen = results["evals"]["retrieval"]["frozen"]["any_to_any"]["mean"]["R@1"]
    assert frozen == pytest.approx(frozen_mean_r1(views, "test"), abs=1e-12)
    assert "the same on the inputs themselves (frozen)" in result.stdout
    assert f"mean R@1: {frozen:.3f} frozen ->" in result.stdout
    best = results["selection"]["best_step"]
    assert [step for step, _ in results["selection"]["history"]] == [0, 3, 6, 9, 12]
    assert max(score for _, score in results["selection"]["history"]) == results["selection"]["best_score"]
    assert f"the model of step {best}" in result.stdout


def test_a_named_anchor_and_modalities(views, tmp_path):
    config = load_config("gram")
    config.data.name, config.data.options.directory = "features", str(views)
    config.loss.anchor, config.num_steps = "c", 3
    trainer, _ = train.train(config, str(tmp_path))
    assert trainer.config.data.modalities == VIEWS and trainer.config.loss.anchor == "c"
    assert trainer.config.eval.retrieval.set_queries == ("c->a", "c->a+b", "a+b->c")


@pytest.mark.parametrize("name", METHODS)
def test_every_shipped_method_runs_on_features_with_the_data_flags_only(name, views, tmp_path):
    config = load_config(name)
    config.data.name, config.data.options.directory = "features", str(views)
    trainer, _ = train.train(config, str(tmp_path), mesh=one_device_mesh())
    state, record = train.selected_state(trainer, str(tmp_path))
    results = evaluation.evaluate(trainer, state, None, record)
    k = 3
    assert len(results["evals"]["retrieval"]["any_to_any"]) == k * (k - 1) + 1
    assert "any_to_any" in results["evals"]["retrieval"]["frozen"]
    assert all(np.isfinite(r["loss"]) for r in _records(tmp_path) if "loss" in r)


def test_standardisation_statistics_come_from_train_and_travel_with_the_checkpoint(views, tmp_path):
    """An `mlp` encoder on features standardises inside the model with the train split's
    statistics; a trainer built without them restores them from the checkpoint."""
    config = load_config("clip")
    config.data.name, config.data.options.directory = "features", str(views)
    config.model.encoder.kind = "mlp"
    trainer, state = train.train(config, str(tmp_path))
    assert trainer.config.model.standardize
    x = np.load(views / "train" / "b.npy")
    standardize = trainer.model(state).standardize["b"]
    np.testing.assert_allclose(standardize.mean[...], x.mean(0), atol=1e-6)
    np.testing.assert_allclose(standardize.std[...], x.std(0), rtol=1e-5)

    from pmrl_jax import checkpoints
    from pmrl_jax.trainer import make_trainer

    bare = make_trainer(trainer.config, trainer.example_shapes, statistics=None)
    manager = checkpoints.checkpoint_manager(str(tmp_path), read_only=True)
    restored, _ = checkpoints.restore(manager, config.num_steps, bare.abstract_state())
    manager.close()
    np.testing.assert_array_equal(bare.model(restored).standardize["b"].std[...], standardize.std[...])
    batch = {m: np.load(views / "test" / f"{m}.npy")[:8] for m in VIEWS}
    np.testing.assert_array_equal(jax.jit(lambda s: bare.model(s)(batch)[0])(restored),
                                  jax.jit(lambda s: trainer.model(s)(batch)[0])(state))


def _bad_directory(root, case):
    write_views(root)
    train_dir = root / "train"
    if case == "no train split":
        for path in train_dir.iterdir():
            path.unlink()
        train_dir.rmdir()
    elif case == "rows differ":
        np.save(train_dir / "b.npy", np.load(train_dir / "b.npy")[:-1])
    elif case == "integer file":
        np.save(train_dir / "ids.npy", np.arange(512 * 4).reshape(512, 4))
    elif case == "nan row":
        x = np.load(train_dir / "c.npy")
        x[7, 3] = np.nan
        np.save(train_dir / "c.npy", x)
    return root


@pytest.mark.parametrize("case,extra,message", [
    ("no train split", (), "split 'train': missing directory {root}/train"),
    ("rows differ", (), "modality 'b': {root}/train/b.npy has 511 rows but 'a' has 512"),
    ("integer file", (), "modality 'ids': {root}/train/ids.npy must hold a float [N, D] array"),
    ("nan row", (), "modality 'c': {root}/train/c.npy has NaN or inf in row 7"),
    ("anchor", ("--config.loss.anchor=gloss",),
     "config.loss.anchor='gloss' is not a modality of dataset 'features'; it has ['a', 'b', 'c']"),
    ("foreign option", ("--config.data.options.views=('a',)",),
     "config.data.options sets ['views'], which dataset 'features' does not take"),
])
def test_bad_input_is_named_in_one_line_before_anything_is_written(case, extra, message, tmp_path):
    root = _bad_directory(tmp_path / "data", case)
    result = _main("--config=configs/clip.py:smoke", "--config.data.name=features",
                   f"--config.data.options.directory={root}", *extra, f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("pmrl_jax: " + message.format(root=root)), \
        result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_features_directory_without_validation_split_trains_without_selection(tmp_path):
    write_views(tmp_path / "data")
    for path in (tmp_path / "data" / "validation").iterdir():
        path.unlink()
    (tmp_path / "data" / "validation").rmdir()
    result = _main("--config=configs/clip.py:smoke", "--config.data.name=features",
                   f"--config.data.options.directory={tmp_path / 'data'}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no model selection: the data has no 'validation' split" in result.stdout
    assert not any("validation/mean_R@1" in r for r in _records(tmp_path / "run"))


def test_float16_inputs_are_read(tmp_path):
    write_views(tmp_path / "data", dtype=np.float16)
    write_split(tmp_path / "data", "extra", {v: np.zeros((2, 32), np.float64) for v in VIEWS})
    config = load_config("clip")
    config.data.name, config.data.options.directory, config.num_steps = "features", str(tmp_path / "data"), 3
    trainer, state = train.train(config, str(tmp_path / "run"))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state) if np.asarray(x).dtype.kind == "f")
