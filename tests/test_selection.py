"""Model selection on the validation split: the record's rules, early stopping, and a
resumed run that selects exactly as an uninterrupted one."""

import json
import os

import jax
import numpy as np
import pytest

from configs_util import load_config
from features_data import frozen_mean_r1, write_views
from pmrl_jax import evaluation, selection, train


def _config(**fields):
    config = load_config("clip")
    config.log_every = 1
    for path, value in fields.items():
        section, _, key = path.rpartition("__")
        (config[section] if section else config)[key] = value
    return config


def test_the_record_keeps_the_first_best_and_counts_patience():
    config = _config(eval__patience=2)
    record = selection.empty_record()
    assert selection.record_score(record, config, 0, 0.5)
    assert not selection.record_score(record, config, 3, 0.5)  # a tie keeps the earlier step
    assert selection.record_score(record, config, 6, 0.6)
    assert not selection.record_score(record, config, 9, 0.4) and not record["stopped_early"]
    assert not selection.record_score(record, config, 12, 0.6) and record["stopped_early"]
    assert (record["best_step"], record["best_score"]) == (6, 0.6)
    assert record["history"] == [[0, 0.5], [3, 0.5], [6, 0.6], [9, 0.4], [12, 0.6]]


def test_selection_scores_the_final_stage_from_its_first_step():
    config = load_config("gram", None)  # 1400 warm-start steps of clip, then 100 of GRAM, every 100
    assert [s for s in range(config.num_steps + 1) if selection.due(config, s)] == [1400, 1500]
    config.num_steps, config.eval.every = 1450, 40
    assert [s for s in range(config.num_steps + 1) if selection.due(config, s)] == [1400, 1440, 1450]
    clip = load_config("clip", None)
    assert [s for s in range(301) if selection.due(clip, s)] == [0, 100, 200, 300]


def test_patience_stops_the_run_and_the_evaluation_uses_the_best_step(tmp_path):
    """A learning rate too small to change any rank: every score equals step 0's, which
    stays the best (ties keep the earlier step); patience 2 stops after step 2."""
    write_views(tmp_path / "data")
    config = _config(num_steps=20, eval__every=1, eval__patience=2, optimizer__learning_rate=1e-12)
    config.data.name, config.data.options.directory = "features", str(tmp_path / "data")
    workdir = str(tmp_path / "run")
    trainer, _ = train.train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert max(r["step"] for r in records if "loss" in r) == 2
    state, record = train.selected_state(trainer, workdir)
    assert record["stopped_early"] and record["best_step"] == record["step"] == 0 and record["last_step"] == 2
    assert sorted(map(int, os.listdir(os.path.join(workdir, "checkpoints")))) == [0, 2]
    # The chosen state is step 0's: the initial (identity) model.
    initial = trainer.init_state()
    for a, b in zip(jax.tree.leaves(initial), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # A rerun trains no further.
    train.train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line) for line in f] == records
    results = evaluation.evaluate(trainer, state, None, record)
    assert results["selection"]["best_step"] == 0


@pytest.mark.parametrize("stop_at", [2, 4])
def test_a_resumed_run_selects_as_an_uninterrupted_one(tmp_path, stop_at):
    config = _config(eval__every=2)
    trainer, _ = train.train(config, str(tmp_path / "straight"))
    train.train(config, str(tmp_path / "stopped"), stop_at=stop_at)
    train.train(config, str(tmp_path / "stopped"))
    straight = train.selected_state(trainer, str(tmp_path / "straight"))
    resumed = train.selected_state(trainer, str(tmp_path / "stopped"))
    assert straight[1]["history"] == resumed[1]["history"] and straight[1]["step"] == resumed[1]["step"]
    for a, b in zip(jax.tree.leaves(straight[0]), jax.tree.leaves(resumed[0]), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_selection_by_a_set_query_scores_that_query_on_the_validation_split(tmp_path):
    """With `config.eval.select_query`, the score is that set query's R@1 by
    `select_similarity`: at step 0 (the identity adapters) the inputs' own R@1, here
    recomputed in numpy (mean cosine, ties against the model)."""
    from pmrl_jax.resolve import prepare

    write_views(tmp_path / "data")
    config = _config(eval__select_query="c->a+b", eval__select_similarity="mean_cosine")
    config.data.name, config.data.options.directory = "features", str(tmp_path / "data")
    prepared = prepare(config)
    trainer, _ = train.train(config, str(tmp_path / "run"), stop_at=1)
    score = selection.validation_score(trainer.config, trainer, trainer.init_state(),
                                       train.validation_source(prepared.config))
    x = {v: np.load(tmp_path / "data" / "validation" / f"{v}.npy").astype(np.float64) for v in "abc"}
    scores = x["c"] @ ((x["a"] + x["b"]) / 2).T
    expected = np.mean([np.sum(np.delete(row, i) >= row[i]) == 0 for i, row in enumerate(scores)])
    assert score == pytest.approx(expected, abs=1e-6)
    config = trainer.config.copy_and_resolve_references()
    config.eval.select_query = ""  # the default: mean any-to-any R@1 by cosine
    pairwise = selection.validation_score(config, trainer, trainer.init_state(), train.validation_source(config))
    assert pairwise == pytest.approx(frozen_mean_r1(tmp_path / "data", "validation"), abs=1e-6)
    assert abs(pairwise - score) > 1e-3
