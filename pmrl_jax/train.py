"""The training loop: resolve the config, open the data, build the trainer, restore the
newest valid checkpoint (or start), then step, log, select on validation and checkpoint
until `config.num_steps`, early stopping, SIGTERM or a non-finite step.

    trainer, state = train(config, workdir)       # the state after the last step
    state, record = selected_state(trainer, workdir)  # the model selection's choice

A batch's way: grain reads this process's rows of the global batch (`data.pipeline`),
adds the input noise, and `Trainer.global_batch` places them on the mesh; the compiled
step (`trainer`) embeds, scores (`objectives`), differentiates and updates; every
`config.eval.every` steps the model is scored on the validation split (`selection`);
checkpoints (`checkpoints`) hold the state, the iterator's position and the selection's
record, so a rerun resumes on the exact next batch.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from pmrl_jax import checkpoints, selection
from pmrl_jax.configs import ConfigError
from pmrl_jax.data import pipeline
from pmrl_jax.resolve import input_layout, open_split, prepare
from pmrl_jax.trainer import Trainer, TrainingHealth, make_trainer
from pmrl_jax.workdir import MetricWriter, Progress, prepare_workdir, say, warn

__all__ = ["ConfigError", "NonFiniteError", "Preempted", "latest_state", "restoring_trainer", "selected_state",
           "train"]


def training_iterator(config: ml_collections.ConfigDict, source, statistics):
    """This process's endless batches of the train split, with the config's noise and
    modality dropout."""
    transforms = []
    if config.data.gaussian_noise:
        noisy = tuple(m for m in config.data.modalities
                      if m not in config.data.gaussian_noise_exclude and m in statistics)
        transforms.append(pipeline.GaussianNoise(level=config.data.gaussian_noise, modalities=noisy,
                                                 scale={m: statistics[m][1] for m in noisy}))
    if config.data.modality_dropout:
        transforms.append(pipeline.ModalityDropout(probability=config.data.modality_dropout,
                                                   modalities=tuple(config.data.modalities)))
    dataset = pipeline.training_dataset(
        source, batch_size=config.data.batch_size // jax.process_count(), seed=config.seed,
        shard_index=jax.process_index(), shard_count=jax.process_count(), transforms=transforms,
        prefetch_threads=config.data.prefetch_threads)
    return iter(dataset)


def validation_source(config: ml_collections.ConfigDict):
    """The validation split's source, or None when selection is off or the data has no
    such split (then a note says so)."""
    if not config.eval.every or not config.data.validation_split:
        return None
    try:
        return open_split(config, config.data.validation_split)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        say(f"no model selection: the data has no {config.data.validation_split!r} split ({error}); the last step "
            f"is evaluated")
        return None


class NonFiniteError(FloatingPointError):
    """A step's loss or gradient was NaN/inf under `config.nonfinite = "stop"`."""


class Preempted(Exception):
    """SIGTERM (or, over several processes, jax's preemption notice) arrived; the state
    of `step` was checkpointed."""

    def __init__(self, step: int, workdir: str):
        super().__init__(f"preempted: stopped after step {step}, checkpoint written in {workdir}; "
                         f"re-run the same command to resume")
        self.step = step


class PreemptionNotice:
    """While entered, SIGTERM is remembered instead of killing the process, and
    `requested(step)` says whether to checkpoint and stop after `step`. Over several
    processes jax's preemption service (which catches SIGTERM itself) picks one step that
    every process reaches."""

    def __enter__(self):
        import signal
        import threading

        self.received, self.previous = False, None
        self.multiprocess = jax.process_count() > 1
        if not self.multiprocess and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._receive)
        return self

    def _receive(self, signum, frame) -> None:
        self.received = True

    def requested(self, step: int) -> bool:
        if self.multiprocess:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.received

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def describe_nonfinite(health: TrainingHealth, modalities) -> str:
    first = int(health.first_bad_step[...])
    inputs = [m for m, bad in zip(modalities, np.asarray(health.bad_inputs[...])) if bad]
    embeddings = [m for m, bad in zip(modalities, np.asarray(health.bad_embeddings[...])) if bad]
    where = (f"the embeddings of {embeddings} were non-finite" if embeddings
             else "every embedding was finite (the loss or its gradient overflowed)")
    cause = f"; the batch's inputs of {inputs} held NaN/inf" if inputs else "; every input was finite"
    return f"step {first}: non-finite loss or gradient; {where}{cause}"


def train(config: ml_collections.ConfigDict, workdir: str, stop_at: int | None = None,
          mesh: jax.sharding.Mesh | None = None) -> tuple[Trainer, object]:
    """Trains to `config.num_steps` (or stops early after step `stop_at`, checkpointed),
    resuming from the newest valid checkpoint in `workdir`. Returns the trainer (whose
    `config` is the resolved config) and the state after the last step. The step key is
    fold_in(key(seed), step), so a resumed run draws the same randomness.

    Raises `Preempted` after checkpointing when SIGTERM arrives, and `NonFiniteError`
    (without checkpointing) when a step goes non-finite under `config.nonfinite="stop"`."""
    prepared = prepare(config)
    config, source = prepared.config, prepared.train
    statistics = pipeline.feature_statistics(source, config.data.modalities)
    trainer = make_trainer(config, prepared.shapes, mesh, statistics)
    validation = validation_source(config)
    prepare_workdir(workdir, config, input_layout(source))  # after the checks: a rejected config writes nothing
    iterator = training_iterator(config, source, statistics)
    manager = checkpoints.checkpoint_manager(workdir)
    start, state, record = checkpoints.restore_newest_valid(manager, trainer.abstract_state(), workdir, iterator)
    if start:
        say(f"resumed from step {start} in {workdir}")
    else:
        state, record = trainer.init_state(), selection.empty_record()
    selecting = selection.enabled(config, validation)
    writer = MetricWriter(workdir, start)
    progress = Progress(config.num_steps, start)
    base_key = jax.random.key(config.seed)
    t0 = time.perf_counter()
    end = config.num_steps if stop_at is None else min(stop_at, config.num_steps)
    skipped = 0

    def select(done: int, state) -> bool:
        """Scores the model after `done` steps; True when it is the best so far."""
        score = selection.validation_score(config, trainer, state, validation)
        writer.write(done, {selection.METRIC: score}, group="validation")
        return selection.record_score(record, config, done, score)

    def save(done: int, state) -> None:
        checkpoints.save(manager, done, state, iterator, record)
        checkpoints.prune(manager, config.max_checkpoints)

    try:
        if start == 0 and selecting and selection.due(config, 0) and select(0, state):
            save(0, state)
        with PreemptionNotice() as preemption:
            for step in range(start, end if not record["stopped_early"] else start):
                batch = trainer.global_batch(next(iterator))
                done = step + 1
                with jax.set_mesh(trainer.mesh):
                    state, metrics = trainer.step_fn(trainer.loss_at(step))(
                        state, batch, np.int32(done), jax.random.fold_in(base_key, step))
                log = done % config.log_every == 0 or done == config.num_steps
                evaluate = selecting and selection.due(config, done)
                preempted = preemption.requested(done)
                checkpoint = done % config.checkpoint_every == 0 or done == end or preempted
                if not (log or checkpoint or evaluate):
                    continue
                metrics = jax.device_get(metrics)
                if metrics["skipped_steps"] > skipped:
                    skipped = int(metrics["skipped_steps"])
                    report = describe_nonfinite(trainer.health(state), config.data.modalities)
                    if config.nonfinite == "stop":
                        raise NonFiniteError(f"{report}. Stopped at step {done} without checkpointing it; "
                                             f"the newest checkpoint predates the bad step "
                                             f"(config.nonfinite='skip' drops such steps instead)")
                    warn(f"skipping non-finite steps ({skipped} so far; the first: {report})")
                if log:
                    writer.write(done, metrics)
                if evaluate:
                    checkpoint |= select(done, state)  # the best step is kept as a checkpoint
                    checkpoint |= record["stopped_early"]
                if log and jax.process_index() == 0:
                    best = record["best_score"]
                    progress.report(done, float(metrics["loss"]), f" best val R@1 {best:.3f}" if best is not None else "")
                if checkpoint:
                    save(done, state)
                if record["stopped_early"]:
                    say(f"early stop after step {done}: {config.eval.patience} evaluations without a better "
                        f"validation R@1 than step {record['best_step']}'s {record['best_score']:.3f}")
                    break
                if preempted:
                    manager.wait_until_finished()
                    raise Preempted(done, workdir)
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
    if end > start:
        say(f"trained steps {start}..{end} in {time.perf_counter() - t0:.1f} s"
            f"{f', {skipped} non-finite steps skipped' if skipped else ''}")
    return trainer, state


def restoring_trainer(config: ml_collections.ConfigDict, workdir: str, mesh: jax.sharding.Mesh | None = None) -> Trainer:
    """The trainer for the checkpoints of `workdir`, which must hold a run of `config`."""
    import os

    from pmrl_jax.workdir import check_workdir_config

    directory = os.path.join(workdir, checkpoints.CHECKPOINTS)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"workdir {workdir!r} has no checkpoints (looked in {directory})")
    prepared = prepare(config)
    check_workdir_config(workdir, prepared.config)
    statistics = pipeline.feature_statistics(prepared.train, prepared.config.data.modalities)
    return make_trainer(prepared.config, prepared.shapes, mesh, statistics)


def latest_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                 mesh: jax.sharding.Mesh | None = None):
    """(trainer, state) restored from the newest (or the given) checkpoint of `workdir`."""
    trainer = restoring_trainer(config, workdir, mesh)
    manager = checkpoints.checkpoint_manager(workdir, read_only=True)
    try:
        if step is None:
            step, state, _ = checkpoints.restore_newest_valid(manager, trainer.abstract_state(), workdir,
                                                              set_aside=False)
            if state is None:
                raise FileNotFoundError(f"workdir {workdir!r} has no checkpoint")
        elif step in manager.all_steps():
            state, _ = checkpoints.restore(manager, step, trainer.abstract_state())
        else:
            raise FileNotFoundError(f"workdir {workdir!r} has no checkpoint at step {step}; "
                                    f"it has steps {list(manager.all_steps())}")
    finally:
        manager.close()
    return trainer, state


def selected_state(trainer: Trainer, workdir: str) -> tuple[object, dict]:
    """(state, record): the model selection's best checkpoint of `workdir`, or the newest
    when selection did not run (`record["best_step"]` is then None); `record["step"]` is
    the step restored."""
    manager = checkpoints.checkpoint_manager(workdir, read_only=True)
    try:
        step, state, record = checkpoints.restore_newest_valid(manager, trainer.abstract_state(), workdir,
                                                               set_aside=False)
        if state is None:
            raise FileNotFoundError(f"workdir {workdir!r} has no checkpoint")
        best = record.get("best_step")
        record = dict(record, last_step=step, step=step)
        if best is not None and best != step:
            if best not in manager.all_steps():
                raise FileNotFoundError(f"workdir {workdir!r}: the best step {best} has no checkpoint")
            state, _ = checkpoints.restore(manager, best, trainer.abstract_state())
            record["step"] = best
    finally:
        manager.close()
    return state, record
