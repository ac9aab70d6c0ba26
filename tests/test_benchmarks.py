"""The benchmark scripts keep running (smallest sizes, few repeats); their figures are
read by people, not asserted here."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _one_device_environment():
    """The environment without conftest's 8 fake devices: the benchmarks time one device,
    and under the flag they compile for eight (the loss benchmark: 64 s against 19 s)."""
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
        [sys.executable, str(ROOT / "benchmarks" / "train_step.py"), "--smoke", "--steps", "2", "--repeats", "2",
         "--configs", "clip,gram"],
        capture_output=True, text=True, timeout=600, env=_one_device_environment(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line[:22].strip(): line[22:].split() for line in result.stdout.splitlines()[2:6]}
    assert list(rows) == ["clip", "minimal JAX clip", "gram", "gram (no head)"], result.stdout
    assert all(float(row[0]) > 0 for row in rows.values())
    assert "clip / minimal JAX clip (steps/s):" in result.stdout and "gram / clip (step time):" in result.stdout
    assert "x what the clip step consumes" in result.stdout


def test_search_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "search.py"), "--candidates", "2000", "--queries", "50",
         "--dim", "16", "--repeats", "1"],
        capture_output=True, text=True, timeout=600, env=_one_device_environment(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Run.embed" in result.stdout and "embed / forward:" in result.stdout, result.stdout
    assert "search / matmul time:" in result.stdout, result.stdout


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


def test_benchmark_arguments_reject_what_would_time_nothing():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import arguments
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert arguments.positive_int("3") == 3
    assert arguments.positive_ints("256,4096") == [256, 4096]
    assert arguments.names_from(["gram", "clip"])("clip,gram") == ["clip", "gram"]
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
            arguments.positive_int(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="got 0"):
        arguments.positive_ints("256,0")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown 'grm'; choose from gram, clip"):
        arguments.names_from(["gram", "clip"])("gram,grm")


def test_a_bad_benchmark_argument_is_a_usage_error():
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--batches", "256,0"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "scaling.py: error: argument --batches: expected a positive integer, got 0"), result.stderr
