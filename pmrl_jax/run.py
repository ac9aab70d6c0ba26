"""Using a trained run: load it from its workdir alone, embed new data, search.

    import pmrl_jax
    run = pmrl_jax.load("runs/gram")                 # the selected (best) step, or the newest
    vectors = run.embed({"gloss": gloss_array})      # {modality: unit [N, d] float32}
    scores, rows = run.search(queries, vectors["gloss"], k=10)

A run needs its workdir only: the resolved config (`config.json`), the inputs' shapes and
dtypes (`inputs.json`) and a checkpoint, which holds the model's parameters and its
input statistics. No training data is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from pmrl_jax.configs import ConfigError
from pmrl_jax.workdir import CONFIG_FILE, INPUTS_FILE


class RunError(ValueError):
    """A workdir that cannot be loaded, or input a run cannot embed; the message names it."""


class Run:
    """A trained model restored from a workdir: `embed` and `search`. `step` is the
    checkpoint restored; `config` the run's resolved config."""

    def __init__(self, workdir: str, trainer, state, step: int, input_dtypes: Mapping[str, str]):
        self.workdir, self.trainer, self.state, self.step = workdir, trainer, state, step
        self.input_dtypes = dict(input_dtypes)
        self.config: ml_collections.ConfigDict = trainer.config
        self._encoders = {}

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.config.data.modalities)

    @property
    def embed_dim(self) -> int:
        return self.config.model.embed_dim

    def _encoder(self, modality: str):
        if modality not in self._encoders:
            trainer = self.trainer

            def encode(state, x):
                _, pooled = trainer.model(state).encode(modality, x)
                return pooled / jax.numpy.maximum(jax.numpy.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)

            self._encoders[modality] = jax.jit(encode, in_shardings=(trainer.state_shardings, trainer.batch_sharding),
                                               out_shardings=trainer.batch_sharding)
        return self._encoders[modality]

    def check_input(self, modality: str, array) -> np.ndarray:
        """`array` as this run's input for `modality`, or a RunError naming what is wrong.
        A modality with a pretrained text encoder also takes a list of strings, tokenized
        as in training."""
        if modality not in self.modalities:
            raise RunError(f"this run has no modality {modality!r}; it has {list(self.modalities)}")
        shape = tuple(self.trainer.example_shapes[modality])
        if isinstance(array, (list, tuple)) or (isinstance(array, np.ndarray) and array.dtype.kind in "OUS"):
            from pmrl_jax.resolve import text_tokenizers  # cached per checkpoint

            tokenizer = text_tokenizers(self.config).get(modality)
            if tokenizer is not None:
                array = tokenizer([str(text) for text in array], pad_to=shape[0])
        array = np.asarray(array)
        if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape:
            raise RunError(f"modality {modality!r}: expected inputs [N, {', '.join(map(str, shape))}]; got "
                           f"shape {tuple(array.shape)}")
        expected = np.dtype(self.input_dtypes[modality])
        if np.issubdtype(expected, np.floating):
            if not np.issubdtype(array.dtype, np.floating):
                raise RunError(f"modality {modality!r}: expected floating-point inputs; got {array.dtype}")
            finite = np.isfinite(array.reshape(len(array), -1)).all(axis=1)
            if not finite.all():
                raise RunError(f"modality {modality!r}: row {int(np.argmin(finite))} holds NaN or inf")
            return array.astype(np.float32)
        if not np.issubdtype(array.dtype, np.integer):
            raise RunError(f"modality {modality!r}: expected integer inputs (token ids); got {array.dtype}")
        return array.astype(expected)

    def embed(self, inputs: Mapping[str, np.ndarray], batch_size: int | None = None,
              progress=None) -> dict[str, np.ndarray]:
        """{modality: unit embeddings [N_m, embed_dim] float32} of `inputs` {modality:
        [N_m, ...]}, each modality on its own (any N, batched and sharded inside), with the
        preprocessing of training (the checkpoint's input statistics; no noise, no
        dropout). `progress(rows_done, rows_total)` is called after each batch."""
        checked = {m: self.check_input(m, x) for m, x in inputs.items()}
        devices = self.trainer.mesh.size
        batch = max(devices, (batch_size or self.config.data.eval_batch_size) // devices * devices)
        total, done, out = sum(len(x) for x in checked.values()), 0, {}
        for modality, array in checked.items():
            encode, pieces = self._encoder(modality), []
            for start in range(0, len(array), batch):
                rows = array[start:start + batch]
                padded = np.concatenate([rows, np.zeros((batch - len(rows),) + rows.shape[1:], rows.dtype)])
                placed = jax.make_array_from_callback(padded.shape, self.trainer.batch_sharding,
                                                      lambda index, padded=padded: padded[index])
                with jax.set_mesh(self.trainer.mesh):
                    z = encode(self.state, placed)
                pieces.append(np.asarray(multihost_utils.process_allgather(z, tiled=True))[:len(rows)])
                done += len(rows)
                if progress:
                    progress(done, total)
            out[modality] = (np.concatenate(pieces) if pieces else np.zeros((0, self.embed_dim), np.float32))
        return out

    def search(self, queries: np.ndarray, index: np.ndarray, k: int = 10, measure: str | None = None,
               tile: int | None = None):
        """(scores [M, k], row numbers [M, k]) of the k best rows of `index` for each of
        the M `queries`, by `measure` (default: the run's evaluation measure); see
        `pmrl_jax.search.search`. Sharded over the run's devices."""
        from pmrl_jax.search import search

        return search(queries, index, k=k, measure=measure or self.config.eval.similarity, mesh=self.trainer.mesh,
                      tile=tile or self.config.eval.tile)


def _read_json(workdir: str, name: str, what: str) -> dict:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
        raise RunError(f"workdir {workdir!r} has no {name} ({what}); runs write it when they train"
                       + (" (this workdir was written before runs saved it: train again to use it this way)"
                          if name == INPUTS_FILE and os.path.exists(os.path.join(workdir, CONFIG_FILE)) else ""))
    with open(path) as f:
        return json.load(f)


def load(workdir: str, step: int | None = None, mesh: jax.sharding.Mesh | None = None) -> Run:
    """The run in `workdir`: the model selection's best step when selection ran, else the
    newest, or the given `step`; on `mesh` (default: every device)."""
    from pmrl_jax import checkpoints
    from pmrl_jax.train import selected_state
    from pmrl_jax.trainer import make_trainer

    if not os.path.isdir(workdir):
        raise RunError(f"workdir {workdir!r} does not exist")
    config = ml_collections.ConfigDict(_read_json(workdir, CONFIG_FILE, "the run's resolved config"))
    inputs = _read_json(workdir, INPUTS_FILE, "the shapes and dtypes of the run's inputs")
    if not os.path.isdir(os.path.join(workdir, checkpoints.CHECKPOINTS)):
        raise RunError(f"workdir {workdir!r} has no checkpoints")
    try:
        trainer = make_trainer(config, {m: tuple(v["shape"]) for m, v in inputs.items()}, mesh)
    except ConfigError as error:
        raise RunError(f"workdir {workdir!r}: its config does not build here: {error}") from None
    if step is None:
        state, record = selected_state(trainer, workdir)
        step = record["step"]
    else:
        manager = checkpoints.checkpoint_manager(workdir, read_only=True)
        try:
            if step not in manager.all_steps():
                raise RunError(f"workdir {workdir!r} has no checkpoint at step {step}; it has {list(manager.all_steps())}")
            state, _ = checkpoints.restore(manager, step, trainer.abstract_state())
        finally:
            manager.close()
    return Run(workdir, trainer, state, step, {m: v["dtype"] for m, v in inputs.items()})
