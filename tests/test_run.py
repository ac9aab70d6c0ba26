"""Using a trained run: loaded from its workdir alone, embedding as the evaluators do,
exporting to files whose R@1 is the reported one, searching like a brute-force top-k,
and refusing bad input by name."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import pmrl_jax
from configs_util import CONFIG_DIR, load_config
from features_data import VIEWS, write_views
from pmrl_jax import evaluation, sharding, train
from pmrl_jax import losses as L
from pmrl_jax.resolve import open_split
from pmrl_jax.run import RunError
from pmrl_jax.search import search

REPO = CONFIG_DIR.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A clip run on a features directory, and what the evaluators saw of its test split;
    then the data is moved away, so that loading must not need it."""
    root = tmp_path_factory.mktemp("run")
    write_views(root / "data")
    config = load_config("clip")
    config.data.name, config.data.options.directory, config.num_steps = "features", str(root / "data"), 9
    trainer, _ = train.train(config, str(root / "work"))
    state, record = train.selected_state(trainer, str(root / "work"))
    results = evaluation.evaluate(trainer, state, str(root / "work"), record)
    test = open_split(trainer.config, "test")
    embedded = evaluation.embed_split(trainer, state, test, batch_size=64).embeddings
    inputs = {m: np.asarray(test.arrays[m]) for m in VIEWS}
    shutil.copytree(root / "data", root / "kept")
    shutil.rmtree(root / "data")
    return {"root": root, "workdir": str(root / "work"), "best": record["best_step"], "results": results,
            "embedded": embedded, "inputs": inputs}


def test_a_run_loads_from_its_workdir_alone_and_embeds_as_the_evaluators(trained):
    run = pmrl_jax.load(trained["workdir"])
    assert run.step == trained["best"] and run.modalities == VIEWS
    vectors = run.embed(trained["inputs"], batch_size=48)
    for m, name in enumerate(VIEWS):
        assert vectors[name].dtype == np.float32 and vectors[name].shape == (128, 32)
        np.testing.assert_allclose(vectors[name], trained["embedded"][:, m], atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(vectors[name], axis=1), 1.0, rtol=1e-5)
    # one modality alone, any number of rows, on one device
    single = pmrl_jax.load(trained["workdir"], mesh=sharding.make_mesh(devices=jax.devices()[:1]))
    np.testing.assert_allclose(single.embed({"b": trained["inputs"]["b"][:5]})["b"], vectors["b"][:5], atol=1e-6)


def test_export_writes_what_the_run_reported(trained, tmp_path):
    output = tmp_path / "out"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, "-m", "pmrl_jax.main", f"--workdir={trained['workdir']}", "--mode=embed",
                             f"--input={trained['root'] / 'kept'}", f"--output={output}"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output / "manifest.json") as f:
        manifest = json.load(f)
    assert manifest["step"] == trained["best"] and manifest["measure"] == "cosine" and manifest["dtype"] == "float32"
    assert manifest["splits"]["test"] == {"rows": 128, "modalities": list(VIEWS)}
    z = {m: np.load(output / "test" / f"{m}.npy") for m in VIEWS}
    np.testing.assert_array_equal(np.load(output / "test" / "ids.npy"), np.arange(128))
    recalls = []
    for q in VIEWS:
        for c in VIEWS:
            if q != c:
                scores = z[q] @ z[c].T
                recalls.append(np.mean((scores >= np.diag(scores)[:, None]).sum(axis=1) == 1))
    reported = trained["results"]["evals"]["retrieval"]["any_to_any"]["mean"]["R@1"]
    assert np.mean(recalls) == pytest.approx(reported, abs=1e-12)
    # An earlier export is never overwritten.
    again = subprocess.run([sys.executable, "-m", "pmrl_jax.main", f"--workdir={trained['workdir']}", "--mode=embed",
                            f"--input={trained['root'] / 'kept'}", f"--output={output}"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "exists (an earlier export?)" in again.stderr.splitlines()[-1]


def test_an_interrupted_export_leaves_nothing_that_looks_complete(trained, tmp_path, monkeypatch):
    from pmrl_jax import export as export_module
    from pmrl_jax.run import Run

    run = pmrl_jax.load(trained["workdir"])
    original, calls = Run.embed, []

    def failing(self, inputs, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, inputs, **kwargs)

    monkeypatch.setattr(Run, "embed", failing)
    with pytest.raises(KeyboardInterrupt):
        export_module.export(run, str(tmp_path / "out"), str(trained["root"] / "kept"))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("measure,rows", [("cosine", 1), ("normalized_volume", 2), ("sigma1", 2)])
def test_search_is_a_brute_force_top_k(measure, rows):
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((37, 1, 16)).astype(np.float32)
    index = rng.standard_normal((301, rows, 16)).astype(np.float32)
    scores, found = search(queries[:, 0] if rows == 1 else queries, index[:, 0] if rows == 1 else index, k=7,
                           measure=measure, mesh=sharding.make_mesh(), tile=64)
    full = np.asarray(L.get_similarity(measure)(queries, index))
    expected = np.argsort(-full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(found, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-5, atol=1e-6)


def test_run_search_uses_the_runs_measure(trained):
    run = pmrl_jax.load(trained["workdir"])
    vectors = run.embed(trained["inputs"])
    scores, rows = run.search(vectors["a"], vectors["b"], k=5)
    brute = vectors["a"] @ vectors["b"].T
    np.testing.assert_array_equal(rows, np.argsort(-brute, axis=1, kind="stable")[:, :5])


@pytest.mark.parametrize("inputs,message", [
    ({"audio": np.zeros((2, 32), np.float32)}, "this run has no modality 'audio'; it has ['a', 'b', 'c']"),
    ({"a": np.zeros((2, 31), np.float32)}, "modality 'a': expected inputs [N, 32]; got shape (2, 31)"),
    ({"a": np.zeros((2, 32), np.int32)}, "modality 'a': expected floating-point inputs; got int32"),
    ({"a": np.where(np.arange(64).reshape(2, 32) == 40, np.nan, 0.0)}, "modality 'a': row 1 holds NaN or inf"),
])
def test_bad_input_to_embed_is_named(trained, inputs, message):
    run = pmrl_jax.load(trained["workdir"])
    with pytest.raises(RunError, match=re.escape(message)):
        run.embed(inputs)


def test_workdirs_that_cannot_load_are_named(trained, tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        pmrl_jax.load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="has no config.json"):
        pmrl_jax.load(str(tmp_path / "empty"))
    old = tmp_path / "old"
    shutil.copytree(trained["workdir"], old)
    os.remove(old / "inputs.json")
    with pytest.raises(RunError, match="written before runs saved it: train again"):
        pmrl_jax.load(str(old))
    shutil.copy(os.path.join(trained["workdir"], "inputs.json"), old / "inputs.json")
    shutil.rmtree(old / "checkpoints")
    with pytest.raises(RunError, match="has no checkpoints"):
        pmrl_jax.load(str(old))
    with pytest.raises(RunError, match="has no checkpoint at step 5"):
        pmrl_jax.load(trained["workdir"], step=5)


def _readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    after = text[text.index(marker):]
    start = after.index("```") + after[after.index("```"):].index("\n") + 1
    return after[start:after.index("```", start)]


def test_the_readmes_use_your_model_commands_run(tmp_path):
    """The README's snippet and export command, on a run of the WordNet views' names."""
    from pmrl_jax.data.features import write_split

    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("validation", 64), ("test", 64)):
        latent = rng.standard_normal((n, 16))
        write_split(tmp_path / "data", split, {name: (latent + rng.standard_normal((n, 16))).astype(np.float32)
                                               for name in ("example", "gloss", "lemmas")})
    config = load_config("clip")
    config.data.name, config.data.options.directory, config.num_steps = "features", str(tmp_path / "data"), 3
    workdir = tmp_path / "runs" / "mine"
    train.train(config, str(workdir))
    code = _readme_block("<!-- use-a-run -->").replace('"runs/mine"', repr(str(workdir)))
    namespace = {"gloss": np.load(tmp_path / "data" / "test" / "gloss.npy"),
                 "lemmas": np.load(tmp_path / "data" / "test" / "lemmas.npy")}
    exec(code, namespace)
    assert namespace["scores"].shape == namespace["rows"].shape == (5, 10)
    command = _readme_block("<!-- embed-command -->").replace(" [--float16]", "").split()
    command = [a.replace("runs/mine", str(workdir)).replace("=DIR", f"={tmp_path / 'data'}")
               .replace("=vectors", f"={tmp_path / 'vectors'}") for a in command]
    assert command[:3] == ["python", "-m", "pmrl_jax.main"]
    result = subprocess.run([sys.executable, *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "vectors" / "test")) == ["example.npy", "gloss.npy", "ids.npy", "lemmas.npy"]
