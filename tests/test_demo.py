"""The README's first command (the demo) runs end to end on the embedded data."""

import subprocess
import sys


def test_demo_trains_and_reports_retrieval():
    result = subprocess.run(
        [sys.executable, "-m", "pmrl_jax.demo", "--methods", "clip,gram,pmrl", "--steps", "60"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["clip"], ["gram"], ["pmrl"])}
    assert set(rows) == {"clip", "gram", "pmrl"}
    clip_recall = float(rows["clip"][3])
    assert clip_recall > 10 * 0.0025, result.stdout  # far above chance after 60 steps


def test_demo_rejects_unknown_methods():
    result = subprocess.run([sys.executable, "-m", "pmrl_jax.demo", "--methods", "nope"], capture_output=True, text=True)
    assert result.returncode != 0 and "unknown method" in result.stderr
