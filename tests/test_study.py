"""The study command: every method x dataset x seed through the real job, one table of
mean ± std, resumable, and the README's results section written by it."""

import json
import shutil
import subprocess
import sys

from configs_util import CONFIG_DIR
from features_data import write_views

REPO = CONFIG_DIR.parent


def test_the_smoke_study_writes_its_tables_and_the_readme_section(tmp_path):
    write_views(tmp_path / "views")
    repository = tmp_path / "repository"
    (repository / "docs").mkdir(parents=True)
    (repository / "README.md").write_text("# x\n\n## Results\n\n<!-- results -->\nold\n<!-- /results -->\n\n## After\n")
    command = [sys.executable, "-m", "pmrl_jax.study", "--config=configs/study.py:smoke",
               f"--config.features_directory={tmp_path / 'views'}", f"--workdir={tmp_path / 'study'}",
               f"--publish={repository}"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "study" / "results.md").read_text()
    assert "## uci_multiple_features" in text and "## views" in text
    assert "| frozen inputs |" in text.split("## views")[1]  # the features dataset's inputs compare
    rows = [line for line in text.splitlines() if line.startswith(("| clip |", "| gram |"))]
    assert rows and all(" ± " in line for line in rows)  # two seeds: mean ± std
    everything = json.loads((tmp_path / "study" / "results.json").read_text())
    assert [len(everything["views"][m]) for m in ("clip", "gram")] == [2, 2]
    assert everything["views"]["gram"][0]["figures"]["anchor->rest R@1 (re-ranked)"] >= 0
    # published: docs/results.md, its plot, and the README section (the rest of the README kept)
    assert (repository / "docs" / "results.md").read_text() == text
    assert (repository / "docs" / "robustness_views.png").exists()
    readme = (repository / "README.md").read_text()
    assert "old" not in readme and "## After" in readme and "| clip |" in readme
    # A rerun reads the finished runs back instead of training them again.
    shutil.rmtree(tmp_path / "views")
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and (tmp_path / "study" / "results.md").read_text() == text
