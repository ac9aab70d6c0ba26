"""Two processes x 4 fake CPU devices on 127.0.0.1 (jax.distributed, gloo) against one
process x 8 devices: the same loss curve on the same global batches, and checkpoints
that restore from one layout into the other. The processes run the real main job."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs_util import load_config
from pmrl_jax import evaluation, train

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = ["--config.log_every=1"]


def _config():
    config = load_config("clip")
    config.log_every = 1
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(workdir, *extra):
    """Runs the main job as processes 0 and 1 of 2, each with 4 fake CPU devices."""
    address = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "pmrl_jax.main", "--config=configs/clip.py:smoke", f"--workdir={workdir}",
               f"--config.distributed.coordinator_address={address}", "--config.distributed.num_processes=2",
               *OVERRIDES, *extra]
    processes = [subprocess.Popen(command + [f"--config.distributed.process_id={p}"], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in range(2)]
    outputs = []
    for process in processes:
        try:
            outputs.append(process.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for p in processes:
                p.kill()
            raise
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    return outputs


def _history(workdir):
    """The training records (model selection's are left out)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [record for record in map(json.loads, f) if "loss" in record]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one_process")
    trainer, state = train.train(_config(), str(workdir))
    selected, record = train.selected_state(trainer, str(workdir))  # what the main job evaluates
    results = evaluation.evaluate(trainer, selected, str(workdir), record)
    return workdir, jax.device_get(state), results


def test_two_processes_follow_the_single_process_curve_and_their_checkpoint_restores_here(tmp_path, one_process):
    reference_workdir, reference_state, reference_results = one_process
    outputs = _two_processes(tmp_path)
    assert "any-to-any retrieval" in outputs[0] and "any-to-any retrieval" not in outputs[1]  # process 0 reports
    two, one = _history(tmp_path), _history(reference_workdir)
    assert [r["step"] for r in two] == [r["step"] for r in one] == list(range(1, 7))  # logged once, by process 0
    # Same global batches; the cross-process reductions (gloo) sum in another order.
    np.testing.assert_allclose([r["loss"] for r in two], [r["loss"] for r in one], rtol=1e-5)
    with open(tmp_path / "results.json") as f:
        np.testing.assert_allclose(json.load(f)["evals"]["retrieval"]["any_to_any"]["mean"]["R@1"],
                                   reference_results["evals"]["retrieval"]["any_to_any"]["mean"]["R@1"], atol=1e-3)
    # The checkpoint the two processes wrote together restores into this one process.
    _, state = train.latest_state(_config(), str(tmp_path))
    for a, b in zip(jax.tree.leaves(reference_state), jax.tree.leaves(jax.device_get(state)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_a_single_process_checkpoint_evaluates_on_two_processes(one_process):
    reference_workdir, _, reference_results = one_process
    outputs = _two_processes(reference_workdir, "--mode=eval")
    assert "any-to-any retrieval" in outputs[0]
    with open(reference_workdir / "results.json") as f:
        again = json.load(f)["evals"]
    for name in ("retrieval", "classification"):
        assert json.dumps(again[name], sort_keys=True) == json.dumps(reference_results["evals"][name], sort_keys=True)
