"""The benchmark scripts keep running (smallest sizes, few repeats); their figures are
read by people, not asserted here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_loss_benchmark_runs():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "losses.py"), "--quick", "--repeats", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith(("gram ", "pmrl "))]
    assert len(rows) == 4, result.stdout  # gram and pmrl at k = 3, 4
