"""Every loss's compiled forward+backward runs 20 times in a row in a fresh process,
under a timeout, so an intermittent hang fails instead of stalling CI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loss_table import LOSSES

HERE = Path(__file__).parent


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_twenty_compiled_steps_in_a_fresh_process(name):
    paths = [str(HERE), str(HERE.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    try:
        result = subprocess.run(
            [sys.executable, str(HERE / "repeat_loss_step.py"), name],
            capture_output=True, text=True, timeout=120, env=env,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: 20 compiled steps did not finish within 120 s (hang)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{name}: 20 steps ok" in result.stdout


def test_importing_losses_pulls_in_no_framework():
    code = (
        "import sys, pmrl_jax.losses\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow_datasets', 'tensorflow', 'grain', 'orbax', 'flax', 'optax')]\n"
        "assert not heavy, heavy\n"
        "print('clean')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr[-2000:]
