"""Orbax checkpoints of a run (`WORKDIR/checkpoints/<step>/`): the training state, the
grain iterator's position and the model selection's record, saved together.

Orbax writes each checkpoint into a temporary directory and renames it when complete, so
a process killed mid-write leaves no step behind, only a temporary directory, which the
next writing manager removes. Which steps are kept is decided here, not by orbax: the
newest `config.max_checkpoints`, and every step that one of them names as its best
(the model selection's choice, `pmrl_jax.selection`), so the best model outlives the
steps after it and a fallback to an older checkpoint finds its best too.
"""

from __future__ import annotations

import os
import shutil
import time

import jax
import jax.numpy as jnp

from pmrl_jax.workdir import warn

CHECKPOINTS = "checkpoints"
CORRUPT = "corrupt_checkpoints"


def checkpoint_manager(workdir: str, read_only: bool = False):
    """The run's checkpoint manager; `read_only` (evaluation, loading a run) touches
    nothing, so it is safe beside a running job."""
    import orbax.checkpoint as ocp

    from absl import logging

    directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    if not read_only:
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, cleanup_tmp_directories=True)
        return ocp.CheckpointManager(directory, options=options)
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # orbax warns that a read-only manager is read-only
    try:
        return ocp.CheckpointManager(directory, options=options)
    finally:
        logging.set_verbosity(verbosity)


def save(manager, step: int, state, iterator, selection: dict) -> None:
    import grain
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=grain.checkpoint.CheckpointSave(iterator),
                                               selection=ocp.args.JsonSave(selection)), force=True)


def restore(manager, step: int, abstract_state, iterator=None) -> tuple[object, dict]:
    """(state, selection record) of `step`, the state on the shardings of
    `abstract_state` (any mesh) and, when an iterator is given, its position restored."""
    import grain
    import orbax.checkpoint as ocp

    items = {"state": ocp.args.StandardRestore(abstract_state), "selection": ocp.args.JsonRestore()}
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], dict(restored["selection"])


def selection_of(manager, step: int) -> dict:
    import orbax.checkpoint as ocp

    return dict(manager.restore(step, args=ocp.args.Composite(selection=ocp.args.JsonRestore()))["selection"])


def prune(manager, keep_newest: int) -> None:
    """Deletes every step but the newest `keep_newest` and the best steps they name."""
    manager.wait_until_finished()
    steps = sorted(manager.all_steps())
    newest = steps[-keep_newest:]
    keep = set(newest)
    for step in newest:
        best = selection_of(manager, step).get("best_step")
        if best is not None:
            keep.add(best)
    for step in steps:
        if step not in keep:
            manager.delete(step)


@jax.jit
def _all_finite(state) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves))


def restore_newest_valid(manager, abstract_state, workdir: str, iterator=None, set_aside: bool = True,
                         steps=None) -> tuple[int, object, dict]:
    """(step, state, selection) from the newest checkpoint (of `steps`, default all) that
    restores and is finite, or (0, None, {}) when there is none. A checkpoint that fails
    is reported and, with `set_aside`, moved to `workdir/corrupt_checkpoints/` (so that
    the step can be written again) before the next older one is tried."""
    failures = []
    for step in sorted(manager.all_steps() if steps is None else steps, reverse=True):
        try:
            state, selection = restore(manager, step, abstract_state, iterator)
            if not bool(_all_finite(state)):
                raise FloatingPointError("it holds NaN or inf")
            if failures:
                if set_aside:
                    manager.reload()
                warn(f"using step {step}, the newest valid checkpoint")
            return step, state, selection
        except Exception as error:  # a corrupted checkpoint fails in many ways (orbax, tensorstore, json)
            message = f"checkpoint of step {step} in {workdir} cannot be restored: {type(error).__name__}: " \
                      f"{str(error).splitlines()[0] if str(error) else ''}"
            if set_aside and jax.process_index() == 0:
                aside = os.path.join(workdir, CORRUPT, f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                shutil.move(os.path.join(str(manager.directory), str(step)), aside)
                message += f"; moved to {aside}"
            warn(message)
            failures.append(step)
    if failures:
        raise RuntimeError(f"no checkpoint in {workdir} can be restored (tried steps {failures}); "
                           f"{'they were moved to corrupt_checkpoints/; ' if set_aside else ''}"
                           f"re-running starts from step 0")
    return 0, None, {}
