"""The study command: every method x dataset x seed through the real job, one table of
mean ± std, resumable, and the README's results section written by it."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from ml_collections import ConfigDict

from configs_util import CONFIG_DIR, load_config
from features_data import write_views
from pmrl_jax import study
from pmrl_jax.configs import ConfigError

REPO = CONFIG_DIR.parent


def test_the_smoke_study_writes_its_tables_and_the_readme_section(tmp_path):
    write_views(tmp_path / "views")
    repository = tmp_path / "repository"
    (repository / "docs").mkdir(parents=True)
    (repository / "README.md").write_text("# x\n\n## Results\n\n<!-- results -->\nold\n<!-- /results -->\n\n## After\n")
    # The features directory alone: it has the frozen inputs to compare (the embedded data
    # takes the same code path, at twice the test's time).
    command = [sys.executable, "-m", "pmrl_jax.study", "--config=configs/study.py:smoke", "--config.embedded=False",
               f"--config.features_directory={tmp_path / 'views'}", f"--workdir={tmp_path / 'study'}",
               f"--publish={repository}"]
    # One device: the study's bookkeeping is under test, not the sharding (half the compile time).
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "study" / "results.md").read_text()
    assert "## views" in text and "## uci_multiple_features" not in text
    assert "| frozen inputs |" in text.split("## views")[1]  # the features dataset's inputs compare
    assert "| anchor->rest R@1 (cosine) |" in text  # a measure's name keeps its parentheses
    rows = [line for line in text.splitlines() if line.startswith(("| clip |", "| gram |"))]
    assert rows and all(" ± " in line for line in rows)  # two seeds: mean ± std
    everything = json.loads((tmp_path / "study" / "results.json").read_text())
    assert [len(everything["views"][m]) for m in ("clip", "gram")] == [2, 2]
    assert everything["views"]["gram"][0]["figures"]["anchor->rest R@1 (re-ranked)"] >= 0
    assert -1 <= everything["views"]["gram"][0]["figures"]["own views' cosine (lowest pair)"] <= 1
    # published: docs/results.md, its plot, and the README section (the rest of the README kept)
    assert (repository / "docs" / "results.md").read_text() == text
    assert (repository / "docs" / "robustness_views.png").exists()
    readme = (repository / "README.md").read_text()
    assert "old" not in readme and "## After" in readme and "| clip |" in readme
    # A rerun reads the finished runs back instead of training them again.
    shutil.rmtree(tmp_path / "views")
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and (tmp_path / "study" / "results.md").read_text() == text


def test_variants_are_rows_that_override_their_method_config():
    config = load_config("study", "from_scratch")
    rows = study.rows(config)
    assert rows["clip"] == ("clip", {})
    method, overrides = rows["gram_warm0_log_volume"]
    assert method == "gram" and overrides == {"loss.gram.volume_logits": "log_volume", "warm_start.steps": 0}
    run = study.run_config(config, *rows["gram_warm0_k3"], seed=1)
    assert (run.loss.name, run.warm_start.steps, run.data.num_modalities, run.seed) == ("gram", 0, 3, 1)
    assert run.evals == ("retrieval",)  # the study's own overrides apply to every row
    fixed = study.run_config(config, *rows["gram_warm0_tau003"], seed=0).model.temperature
    assert (fixed.initial, fixed.learnable) == (0.03, False)


def test_a_variant_overriding_an_unknown_field_is_named():
    config = load_config("study", "smoke")
    config.variants = ConfigDict({"odd": {"method": "gram", "overrides": {"loss": {"gram": {"volume_logit": "log_volume"}}}}})
    with pytest.raises(ConfigError, match="loss.gram.volume_logit.*no field 'volume_logit'"):
        study.run_config(config, *study.rows(config)["odd"], seed=0)
    config.variants = ConfigDict({"gram": {"method": "gram", "overrides": {}}})
    with pytest.raises(ConfigError, match="config.variants.gram"):
        study.rows(config)
