"""Faults lose nothing: kill -9 and SIGTERM of the real main job, a corrupted newest
checkpoint, and non-finite steps. "Bit-identical" compares every array of the final
state (parameters, optimizer moments, counters) with an uninterrupted run's."""

import itertools
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from configs_util import load_config
from pmrl_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS, CHECKPOINT_EVERY = 40, 4
# The job as a user runs it; one checkpoint every 4 steps so that kills land both
# between steps and inside checkpoint writes.
# Model selection is off here: these tests are about the training state (selection's
# resumption: tests/test_selection.py).
OVERRIDES = {"num_steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "log_every": 1, "eval.every": 0}


def _config():
    config = load_config("clip")
    for key, value in OVERRIDES.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    return config


def _command(workdir):
    return [sys.executable, "-m", "pmrl_jax.main", "--config=configs/clip.py:smoke", f"--workdir={workdir}",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]


@pytest.fixture(scope="module")
def job_env():
    """The subprocesses see this process's 8 fake devices and share its compilation
    cache (conftest.py), caching every program: they run the same ones each time."""
    return dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted run of the same config on the same 8 devices."""
    workdir = tmp_path_factory.mktemp("straight")
    trainer, state = train.train(_config(), str(workdir))
    return workdir, jax.device_get(state)


def _history(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _logged_step(workdir) -> int:
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            lines = f.read().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or a line half-written
        return 0


def _complete_steps(workdir) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def _start_and_wait_for(workdir, env, step):
    process = subprocess.Popen(_command(workdir), cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while _logged_step(workdir) < step:
        assert process.poll() is None, f"the job ended before step {step}:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, f"the job did not reach step {step} in 240 s"
        time.sleep(0.005)
    return process


def _assert_same_state(workdir, reference_state):
    _, state = train.latest_state(_config(), str(workdir))
    for a, b in zip(jax.tree.leaves(reference_state), jax.tree.leaves(jax.device_get(state)), strict=True):
        np.testing.assert_array_equal(a, b)


def _assert_same_history(workdir, straight_workdir):
    resumed, straight = _history(workdir), _history(straight_workdir)
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    # Each step's loss depends on its batch: equal losses step by step = same batches, same order.
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


def test_kill_9_at_random_moments_then_rerun_ends_bit_identical(tmp_path, job_env, straight_run):
    straight_workdir, straight_state = straight_run
    rng = random.Random(20261122)
    workdir = tmp_path / "killed"
    kills = []
    for target in sorted(rng.sample(range(3, STEPS - 4), 3)):
        process = _start_and_wait_for(workdir, job_env, max(target, _logged_step(workdir) + 2))
        time.sleep(rng.uniform(0.0, 0.05))  # anywhere in a step or a checkpoint write
        process.send_signal(signal.SIGKILL)
        process.wait()
        checkpoints = os.listdir(workdir / "checkpoints")
        kills.append({"logged": _logged_step(workdir), "complete": _complete_steps(workdir),
                      "unfinished_writes": [d for d in checkpoints if not d.isdigit()]})
        assert process.returncode == -signal.SIGKILL
    rerun = subprocess.run(_command(workdir), cwd=REPO, env=job_env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    newest = kills[-1]["complete"][-1] if kills[-1]["complete"] else 0
    assert f"resumed from step {newest} in" in rerun.stdout, (kills, rerun.stdout)
    print("kills:", kills)  # shown with -s: where each kill landed
    _assert_same_history(workdir, straight_workdir)
    _assert_same_state(workdir, straight_state)
    assert not [d for d in os.listdir(workdir / "checkpoints") if not d.isdigit()], "unfinished writes left behind"


def test_sigterm_checkpoints_the_current_step_and_the_rerun_continues(tmp_path, job_env, straight_run):
    straight_workdir, straight_state = straight_run
    workdir = tmp_path / "preempted"
    process = _start_and_wait_for(workdir, job_env, 9)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 143, output
    stopped = _logged_step(workdir)
    assert f"preempted: stopped after step {stopped}, checkpoint written" in output
    assert _complete_steps(workdir)[-1] == stopped  # the current step, whether or not a multiple of 4
    rerun = subprocess.run(_command(workdir), cwd=REPO, env=job_env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"resumed from step {stopped} in" in rerun.stdout
    _assert_same_history(workdir, straight_workdir)
    _assert_same_state(workdir, straight_state)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _scramble(path):
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 7):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _scramble], ids=["truncated", "scrambled"])
def test_corrupted_newest_checkpoint_falls_back_to_the_previous_one(damage, tmp_path, capfd, straight_run):
    straight_workdir, straight_state = straight_run
    train.train(_config(), str(tmp_path), stop_at=12)
    assert _complete_steps(tmp_path) == [8, 12]
    for path in (tmp_path / "checkpoints" / "12" / "state").rglob("*"):
        if path.is_file() and path.name != "commit_success.txt":
            damage(path)
    capfd.readouterr()
    train.train(_config(), str(tmp_path))
    err = capfd.readouterr().err
    assert "checkpoint of step 12" in err and "cannot be restored" in err and "using step 8" in err, err
    (aside,) = os.listdir(tmp_path / "corrupt_checkpoints")
    assert aside.startswith("12-")  # kept for inspection, out of orbax's way
    _assert_same_history(tmp_path, straight_workdir)
    _assert_same_state(tmp_path, straight_state)


def _poison_batch(monkeypatch, number, modality):
    """Makes the `number`-th global batch of this process hold NaN in one modality."""
    original, calls = train.Trainer.global_batch, itertools.count(1)

    def global_batch(self, local_batch):
        if next(calls) == number:
            local_batch = dict(local_batch, **{modality: np.full_like(local_batch[modality], np.nan)})
        return original(self, local_batch)

    monkeypatch.setattr(train.Trainer, "global_batch", global_batch)


def _smoke(**fields):
    config = load_config("clip")
    config.eval.every = 0
    for key, value in fields.items():
        config[key] = value
    return config


def test_nonfinite_stop_names_the_step_and_modality_and_checkpoints_nothing_bad(tmp_path, monkeypatch):
    config = _smoke(nonfinite="stop", checkpoint_every=2, log_every=5)
    _poison_batch(monkeypatch, 3, "fac")
    with pytest.raises(train.NonFiniteError, match=r"step 3: .*embeddings of \['fac'\].*inputs of \['fac'\]"):
        train.train(config, str(tmp_path))
    # Detected at step 4 (the next check); step 4 is not checkpointed and step 2's state is clean.
    assert _complete_steps(tmp_path) == [2]
    _, state = train.latest_state(config, str(tmp_path))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state) if np.asarray(x).dtype.kind == "f")


def _model_and_optimizer(trainer, state):
    model, optimizer, _ = nnx.merge(trainer.graphdef, state)
    return jax.tree.leaves(jax.device_get(nnx.state((model, optimizer))))


def test_nonfinite_skip_drops_the_step_counts_it_and_goes_on(tmp_path, monkeypatch):
    config = _smoke(nonfinite="skip", checkpoint_every=2, log_every=1)
    _poison_batch(monkeypatch, 3, "kar")
    trainer, state = train.train(config, str(tmp_path), stop_at=3)
    assert _complete_steps(tmp_path) == [2, 3]
    history = _history(tmp_path)
    assert [r["skipped_steps"] for r in history] == [0, 0, 1] and not np.isfinite(history[2]["loss"])
    health = trainer.health(state)
    assert int(health.first_bad_step[...]) == 3 and list(np.asarray(health.bad_inputs[...])) == [False, False, True]
    # The skipped step changed nothing: model and optimizer state after step 3 = after step 2.
    _, after_two = train.latest_state(config, str(tmp_path), step=2)
    for a, b in zip(_model_and_optimizer(trainer, after_two), _model_and_optimizer(trainer, state), strict=True):
        np.testing.assert_array_equal(a, b)
    trainer, state = train.train(config, str(tmp_path))  # and the run goes on to the end
    assert [r["step"] for r in _history(tmp_path)] == list(range(1, config.num_steps + 1))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state) if np.asarray(x).dtype.kind == "f")
