"""A run's directory and what it writes there besides checkpoints: the resolved config
(`config.json`), the metrics (`metrics.jsonl` and TensorBoard event files), a progress
line, and atomic writes. Only process 0 writes (and prints)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping

import jax
import ml_collections

from pmrl_jax.configs import ConfigError

CONFIG_FILE = "config.json"
INPUTS_FILE = "inputs.json"
METRICS_FILE = "metrics.jsonl"


def say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def write_atomically(path: str, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it into place: a
    reader (or a crash) never sees half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def saved_config(workdir: str) -> dict | None:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir whose checkpoints came from a config with another model or data
    layout: their shapes would not restore."""
    previous = saved_config(workdir)
    if previous is None:
        return
    for section, keys in (("model", None), ("data", ("name", "options", "modalities"))):
        old, new = previous.get(section, {}), json.loads(config[section].to_json())
        if keys:
            old, new = {k: old.get(k) for k in keys}, {k: new.get(k) for k in keys}
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"workdir {workdir!r} holds a run whose config.{section} differs from this one in "
                              f"{', '.join(f'config.{section}.{k}' for k in changed)} (was "
                              f"{ {k: old.get(k) for k in changed} }, now { {k: new.get(k) for k in changed} }); "
                              f"use another --workdir")


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict, inputs: Mapping[str, dict]) -> None:
    """Checks the workdir against the (resolved) config, then writes it as config.json,
    and `inputs` ({modality: {"shape", "dtype"}} of one example) as inputs.json: with a
    checkpoint, what loading the run needs (`pmrl_jax.run.load`)."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir!r} is a file, not a directory")
    check_workdir_config(workdir, config)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        write_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json(indent=2))
        write_atomically(os.path.join(workdir, INPUTS_FILE), json.dumps(dict(inputs), indent=2))


class Progress:
    """A progress line with loss, steps/s and ETA: redrawn in place on a terminal, one
    plain line per report otherwise (log files, CI)."""

    def __init__(self, total: int, start: int, stream=None):
        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def report(self, step: int, loss: float, extra: str = "") -> None:
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        filled = int(30 * step / self.total)
        line = (f"[{'#' * filled}{'.' * (30 - filled)}] step {step}/{self.total} loss {loss:.4f} "
                f"{rate:.1f} steps/s ETA {eta:.0f}s{extra}")
        self.stream.write(("\r" + line + ("\n" if step == self.total else "")) if self.tty else line + "\n")
        self.stream.flush()


class MetricWriter:
    """TensorBoard event files (tensorboardX: no TensorFlow) plus `metrics.jsonl`; only
    process 0 writes. On resume, history beyond the restored step is dropped. Training
    metrics are tagged `train/<name>`, model selection's `validation/<name>`."""

    def __init__(self, workdir: str, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, METRICS_FILE)
        self.history: list[dict] = []
        if not self.enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.history = [r for r in map(json.loads, f) if r["step"] <= resume_step]
        write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float], group: str = "train") -> None:
        if not self.enabled:
            return
        prefix = "" if group == "train" else f"{group}/"
        record = {"step": step, **{f"{prefix}{k}": float(v) for k, v in metrics.items()}}
        self.history.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{group}/{name}", float(value), step)

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
