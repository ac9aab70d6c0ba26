"""The benchmark scripts keep running (smallest sizes, few repeats); their figures are
read by people, not asserted here."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _one_device_environment():
    """The environment without conftest's 8 fake devices: the loss benchmark times one
    device, and under the flag it takes three times as long (64 s against 19 s)."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    return dict(os.environ, XLA_FLAGS=" ".join(flags))


def test_loss_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "losses.py"), "--quick", "--repeats", "2"],
        capture_output=True, text=True, timeout=600, env=_one_device_environment(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("gram ", "pmrl "))]
    assert len(rows) == 4, result.stdout  # gram and pmrl at k = 3, 4
    assert ", 1 device(s)," in result.stdout.splitlines()[0], result.stdout


def test_data_benchmark_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "data.py"), "--examples", "3000", "--dir", str(tmp_path),
         "--batches", "5"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("examples/s") == 2, result.stdout
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["m0.npy", "m1.npy", "m2.npy"]


def test_train_step_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--smoke", "--steps", "2", "--configs", "clip,gram"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(("clip ", "gram "))]
    assert [row[0] for row in rows] == ["clip", "gram"], result.stdout
    assert all(float(row[3]) > 0 and row[5].endswith("%") for row in rows)


def test_eval_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "eval.py"), "--sizes", "500", "--dim", "16", "--tile", "32"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("500 ")]
    assert float(row[2]) < float(row[3]), result.stdout  # blocked memory below the unblocked program's


def test_scaling_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--batches", "256", "--dim", "32", "--losses", "gram"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("gram ")]
    assert [int(row[2]) for row in rows] == [1, 2, 4, 8], result.stdout
