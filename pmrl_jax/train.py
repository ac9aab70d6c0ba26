"""Training: the model and optimizer state, one sharded `jax.jit` step, the loop, and
orbax checkpoints that hold the state and the grain iterator together.

The state is `nnx.split((model, optimizer))`: a graph definition (static) and a pytree
of arrays. The step is a pure function of (state, global batch, step key) compiled once
per loss with explicit in/out shardings and the state donated. The loss sees the global
batch: the batch is sharded on the mesh's data axes and GSPMD inserts the collectives,
so every negative on every device contributes to the gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
import types
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from pmrl_jax import losses as L
from pmrl_jax.losses import blocked as LB
from pmrl_jax import sharding
from pmrl_jax.configs import ConfigError
from pmrl_jax.models import MultimodalModel, matching_loss

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# ---- losses by name --------------------------------------------------------------------


def _split_anchor(z, anchor):
    others = [m for m in range(z.shape[1]) if m != anchor]
    return z[:, anchor], z[:, jnp.asarray(others)]


# Each adapter takes the loss library `lib`: pmrl_jax.losses, or its blocked forms over
# a ring of devices (pmrl_jax.losses.blocked, config.loss.blocked) under the same names.
BLOCKED = types.SimpleNamespace(**{
    name.removeprefix("blocked_"): getattr(LB, name) for name in dir(LB) if name.startswith("blocked_")})


def _clip(z, temperature, cfg, lib=L):
    return lib.anchored_infonce_loss(z, temperature=temperature, anchor=cfg.anchor)


def _infonce(z, temperature, cfg, lib=L):
    return lib.infonce_loss(z[:, 0], z[:, 1], temperature=temperature, label_smoothing=cfg.label_smoothing)


def _all_pairs(z, temperature, cfg, lib=L):
    return lib.all_pairs_infonce_loss(z, temperature=temperature)


def _gram(z, temperature, cfg, lib=L):
    anchor, others = _split_anchor(z, cfg.anchor)
    return lib.gram_contrastive_loss(anchor, others, temperature=temperature, label_smoothing=cfg.label_smoothing)


def _pmrl(z, temperature, cfg, lib=L):
    del temperature  # PMRL's temperatures are fixed (MATH.md section 3)
    return lib.pmrl_loss(z, alignment_temperature=cfg.alignment_temperature,
                         regularization_temperature=cfg.regularization_temperature,
                         regularization_weight=cfg.regularization_weight)


def _symile(z, temperature, cfg, lib=L):
    return lib.symile_loss(z, temperature=temperature)


def _triangle(z, temperature, cfg, lib=L):
    anchor, others = _split_anchor(z, cfg.anchor)
    return lib.triangle_contrastive_loss(anchor, others, temperature=temperature, label_smoothing=cfg.label_smoothing)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    fn: Callable
    min_modalities: int
    max_modalities: int | None = None
    blockable: bool = True  # has a form in pmrl_jax.losses.blocked

    def blocked(self) -> Callable:
        return functools.partial(self.fn, lib=BLOCKED)


LOSSES: dict[str, LossSpec] = {
    "clip": LossSpec(_clip, 2),            # anchored InfoNCE (ImageBind / LanguageBind)
    "infonce": LossSpec(_infonce, 2, 2),   # CLIP, two modalities
    "all_pairs": LossSpec(_all_pairs, 2, blockable=False),
    "gram": LossSpec(_gram, 2),
    "pmrl": LossSpec(_pmrl, 2),
    "symile": LossSpec(_symile, 2),
    "triangle": LossSpec(_triangle, 3, 3),
}


def check_loss(name: str, num_modalities: int, field: str = "config.loss.name") -> LossSpec:
    if name not in LOSSES:
        raise ConfigError(f"{field}={name!r} is not a known loss; known: {', '.join(LOSSES)}")
    spec = LOSSES[name]
    if num_modalities < spec.min_modalities or (spec.max_modalities and num_modalities > spec.max_modalities):
        wanted = spec.min_modalities if spec.max_modalities == spec.min_modalities else f">= {spec.min_modalities}"
        raise ConfigError(f"{field}={name!r} needs k = {wanted} modalities; config.data.modalities has "
                          f"{num_modalities}")
    return spec


# ---- model, optimizer, state -----------------------------------------------------------


def encoder_options(config: ml_collections.ConfigDict) -> dict[str, dict]:
    unknown = set(config.model.encoders) - set(config.data.modalities)
    if unknown:
        raise ConfigError(f"config.model.encoders names {sorted(unknown)}, which are not in config.data.modalities "
                          f"{list(config.data.modalities)}")
    options = {}
    for name in config.data.modalities:
        merged = config.model.encoder.to_dict()
        merged.update(config.model.encoders[name].to_dict() if name in config.model.encoders else {})
        options[name] = merged
    return options


def build_model(config: ml_collections.ConfigDict, example_shapes: Mapping[str, tuple[int, ...]],
                rngs: nnx.Rngs) -> MultimodalModel:
    matching = config.model.matching
    return MultimodalModel(
        config.data.modalities, example_shapes, encoder_options(config), width=config.model.width,
        embed_dim=config.model.embed_dim, temperature=config.model.temperature.to_dict(),
        matching=dict(width=matching.width, heads=matching.heads, depth=matching.depth) if matching.enabled else None,
        dtype=DTYPES[config.model.dtype], rngs=rngs,
    )


class TrainingHealth(nnx.Module):
    """What the run has seen of non-finite steps, checkpointed with the state:
    how many steps were not applied because their loss or gradient was NaN/inf, and at
    the first one, its (1-based) step and which modalities' inputs and embeddings were
    non-finite."""

    def __init__(self, num_modalities: int):
        self.skipped_steps = nnx.Variable(jnp.zeros((), jnp.int32))
        self.first_bad_step = nnx.Variable(jnp.zeros((), jnp.int32))
        self.bad_inputs = nnx.Variable(jnp.zeros((num_modalities,), jnp.bool_))
        self.bad_embeddings = nnx.Variable(jnp.zeros((num_modalities,), jnp.bool_))


def build_training_objects(config: ml_collections.ConfigDict, example_shapes: Mapping[str, tuple[int, ...]]):
    """(model, optimizer, health): the objects whose `nnx.state` is the training state."""
    model = build_model(config, example_shapes, nnx.Rngs(config.seed))
    return (model, nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param),
            TrainingHealth(len(config.data.modalities)))


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    opt = config.optimizer
    warmup = min(opt.warmup_steps, config.num_steps)
    decay_steps = max(config.num_steps - warmup, 1)
    if opt.decay == "cosine":
        decay = optax.cosine_decay_schedule(opt.learning_rate, decay_steps)
    elif opt.decay == "linear":
        decay = optax.linear_schedule(opt.learning_rate, 0.0, decay_steps)
    else:
        raise ConfigError(f"config.optimizer.decay={opt.decay!r}; expected 'cosine' or 'linear'")
    return optax.join_schedules([optax.linear_schedule(0.0, opt.learning_rate, warmup), decay], [warmup])


def _apply_update(model, optimizer, grads) -> None:
    optimizer.update(model, grads)


def _skip_update(model, optimizer, grads) -> None:
    del model, optimizer, grads


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _decay_mask(params):
    # Weight decay on matrices only: biases, norm scales and the temperature are exempt.
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    opt = config.optimizer
    adamw = optax.adamw(learning_rate_schedule(config), b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                        mask=_decay_mask)
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), adamw) if opt.grad_clip_norm else adamw


@dataclasses.dataclass
class Trainer:
    """Everything the loop needs, built once from the config and the mesh."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    state_shardings: object
    batch_sharding: jax.sharding.NamedSharding
    example_shapes: dict
    _compiled_steps: dict = dataclasses.field(default_factory=dict, repr=False)

    def _initial_state(self):
        return nnx.state(build_training_objects(self.config, self.example_shapes))

    def init_state(self):
        """The initial state, created directly in its shardings."""
        with jax.set_mesh(self.mesh):
            return jax.jit(self._initial_state, out_shardings=self.state_shardings)()

    def abstract_state(self):
        """Shapes, dtypes and shardings of the state (the target a checkpoint restores onto)."""
        shapes_only = jax.eval_shape(self._initial_state)
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes_only,
                            self.state_shardings)

    def model(self, state) -> MultimodalModel:
        return nnx.merge(self.graphdef, state)[0]

    def forward_fn(self, tokens: bool = False):
        """The compiled inference forward: (state, batch) -> (embeddings, {modality:
        tokens} if `tokens` else {}), compiled once per trainer."""
        key = ("forward", tokens)
        if key not in self._compiled_steps:
            def forward(state, batch):
                z, token_dict = self.model(state)(batch)
                return z, (token_dict if tokens else {})

            self._compiled_steps[key] = jax.jit(forward, in_shardings=(self.state_shardings, self.batch_sharding))
        return self._compiled_steps[key]

    def health(self, state) -> TrainingHealth:
        return nnx.merge(self.graphdef, state)[2]

    def step_fn(self, loss_name: str):
        """The compiled training step for one loss: (state, batch, step, key) -> (state,
        metrics), `step` being the 1-based number of the step (it names a non-finite one)."""
        if loss_name not in self._compiled_steps:
            self._compiled_steps[loss_name] = self._make_step(loss_name)
        return self._compiled_steps[loss_name]

    def _make_step(self, loss_name: str):
        config, graphdef = self.config, self.graphdef
        loss_fn = LOSSES[loss_name].blocked() if config.loss.blocked else LOSSES[loss_name].fn
        anchor = config.loss.anchor
        matching_weight = config.model.matching.weight if config.model.matching.enabled else 0.0
        similarity = L.get_similarity(config.loss.similarity)
        skip_nonfinite = config.nonfinite == "skip"

        def step(state, batch, step_number, key):
            model, optimizer, health = nnx.merge(graphdef, state)
            dropout_key, negatives_key = jax.random.split(key)

            def objective(model):
                z, tokens = model(batch, rngs=nnx.Rngs(dropout=dropout_key))
                contrastive = loss_fn(z, model.temperature(), config.loss)
                metrics = {"contrastive_loss": contrastive}
                total = contrastive
                if matching_weight:
                    anchor_z, others_z = _split_anchor(z, anchor)
                    anchor_name = config.data.modalities[anchor]
                    others = [m for m in config.data.modalities if m != anchor_name]
                    match = matching_loss(model.matching, tokens[anchor_name],
                                          jnp.concatenate([tokens[m] for m in others], axis=1),
                                          similarity(anchor_z[:, None], others_z), negatives_key)
                    metrics["matching_loss"] = match
                    total = total + matching_weight * match
                return total, (metrics, ~jnp.all(jnp.isfinite(z), axis=(0, 2)))

            (loss, (metrics, bad_embeddings)), grads = nnx.value_and_grad(objective, has_aux=True)(model)
            grad_norm = _global_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            # Under "stop", nothing is applied after the first non-finite step: the loop
            # stops at its next check with the state as it was before that step. A cond,
            # not a select over the state: a select reads and writes every parameter and
            # moment once more (measured: ~20% of the step of the default configs).
            apply = finite if skip_nonfinite else finite & (health.skipped_steps[...] == 0)
            nnx.cond(apply, _apply_update, _skip_update, model, optimizer, grads)

            first = ~finite & (health.skipped_steps[...] == 0)
            health.first_bad_step[...] = jnp.where(first, step_number, health.first_bad_step[...])
            health.bad_inputs[...] = jnp.where(first, jnp.stack([~jnp.all(jnp.isfinite(batch[m]))
                                                                 for m in config.data.modalities]),
                                               health.bad_inputs[...])
            health.bad_embeddings[...] = jnp.where(first, bad_embeddings, health.bad_embeddings[...])
            health.skipped_steps[...] += (~finite).astype(jnp.int32)
            metrics.update(loss=loss, temperature=model.temperature(), grad_norm=grad_norm,
                           skipped_steps=health.skipped_steps[...])
            return nnx.state((model, optimizer, health)), metrics

        replicated = sharding.replicated(self.mesh)
        return jax.jit(step, in_shardings=(self.state_shardings, self.batch_sharding, replicated, replicated),
                       out_shardings=(self.state_shardings, replicated), donate_argnums=0)

    def loss_at(self, step: int) -> str:
        warm = self.config.warm_start
        return warm.loss if warm.loss and step < warm.steps else self.config.loss.name

    def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows -> global arrays sharded on the data axes."""
        return {name: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local_batch[name]))
                for name in self.config.data.modalities}


def make_trainer(config: ml_collections.ConfigDict, example_shapes: Mapping[str, tuple[int, ...]],
                 mesh: jax.sharding.Mesh | None = None) -> Trainer:
    """The trainer for `config` on `mesh` (default: `config.mesh` over every device); a
    given mesh needs the axes `data` and `fsdp`, and runs with them as Auto axes
    (`sharding.training_mesh`)."""
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp) if mesh is None else sharding.training_mesh(mesh)
    validate(config, example_shapes, mesh.size)
    shapes = {k: tuple(v) for k, v in example_shapes.items()}
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_training_objects(config, shapes)))
    return Trainer(config, mesh, graphdef, sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size),
                   sharding.batch_sharding(mesh), shapes)


# Numeric fields and the range each must lie in: (lowest allowed, first excluded or None).
FIELD_BOUNDS = {
    "num_steps": (1, None),
    "log_every": (1, None),
    "checkpoint_every": (1, None),
    "max_checkpoints": (1, None),
    "data.batch_size": (1, None),
    "data.eval_batch_size": (1, None),
    "data.prefetch_threads": (0, None),
    "data.gaussian_noise": (0, None),
    "data.modality_dropout": (0, 1),
    "model.width": (1, None),
    "model.embed_dim": (1, None),
    "model.matching.weight": (0, None),
    "loss.label_smoothing": (0, 1),
    "loss.regularization_weight": (0, None),
    "warm_start.steps": (0, None),
    "optimizer.warmup_steps": (0, None),
    "optimizer.weight_decay": (0, None),
    "optimizer.b1": (0, 1),
    "optimizer.b2": (0, 1),
    "optimizer.grad_clip_norm": (0, None),
}


def _check_bounds(config: ml_collections.ConfigDict) -> None:
    for path, (lowest, excluded) in FIELD_BOUNDS.items():
        value = functools.reduce(getattr, path.split("."), config)
        if not (lowest <= value and (excluded is None or value < excluded)):  # NaN fails too
            expected = f">= {lowest}" if excluded is None else f"in [{lowest}, {excluded})"
            raise ConfigError(f"config.{path} must be {expected}; got {value}")
    if not config.optimizer.learning_rate > 0:
        raise ConfigError(f"config.optimizer.learning_rate must be > 0; got {config.optimizer.learning_rate}")


def validate(config: ml_collections.ConfigDict, example_shapes: Mapping[str, tuple[int, ...]],
             num_devices: int | None = None) -> None:
    """Rejects a bad configuration before anything is compiled or written: a ConfigError
    naming the field."""
    _check_bounds(config)
    modalities = list(config.data.modalities)
    if len(set(modalities)) != len(modalities):
        raise ConfigError(f"config.data.modalities has duplicates: {modalities}")
    missing = [m for m in modalities if m not in example_shapes]
    if missing:
        raise ConfigError(f"config.data.modalities names {missing}, which dataset {config.data.name!r} does not have; "
                          f"it has {sorted(example_shapes)}")
    unknown = [m for m in config.data.gaussian_noise_exclude if m not in example_shapes]
    if unknown:
        raise ConfigError(f"config.data.gaussian_noise_exclude names {unknown}, which dataset {config.data.name!r} "
                          f"does not have; it has {sorted(example_shapes)}")
    check_loss(config.loss.name, len(modalities))
    if config.warm_start.loss:
        check_loss(config.warm_start.loss, len(modalities), "config.warm_start.loss")
    for field, name in (("config.loss.name", config.loss.name), ("config.warm_start.loss", config.warm_start.loss)):
        if config.loss.blocked and name and not LOSSES[name].blockable:
            raise ConfigError(f"config.loss.blocked=True, but {field}={name!r} has no blocked form; blocked: "
                              f"{', '.join(n for n, spec in LOSSES.items() if spec.blockable)}")
    if not 0 <= config.loss.anchor < len(modalities):
        raise ConfigError(f"config.loss.anchor={config.loss.anchor} is not an index into {len(modalities)} modalities")
    if config.loss.similarity not in L.similarity_names():
        raise ConfigError(f"config.loss.similarity={config.loss.similarity!r}; known: {', '.join(L.similarity_names())}")
    if config.eval.similarity not in L.similarity_names():
        raise ConfigError(f"config.eval.similarity={config.eval.similarity!r}; known: {', '.join(L.similarity_names())}")
    temperature = config.model.temperature
    if not 0 < temperature.minimum <= temperature.initial <= temperature.maximum:
        raise ConfigError("config.model.temperature needs 0 < minimum <= initial <= maximum; got "
                          f"{temperature.minimum}, {temperature.initial}, {temperature.maximum}")
    for field in ("alignment_temperature", "regularization_temperature"):
        if config.loss[field] <= 0:
            raise ConfigError(f"config.loss.{field} must be > 0; got {config.loss[field]}")
    if config.model.dtype not in DTYPES:
        raise ConfigError(f"config.model.dtype={config.model.dtype!r}; known: {', '.join(DTYPES)}")
    from pmrl_jax.evaluators import check_evals

    check_evals(config)
    if config.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"config.nonfinite={config.nonfinite!r}; expected 'stop' or 'skip'")
    devices = jax.device_count() if num_devices is None else num_devices
    if config.data.batch_size % devices or config.data.eval_batch_size % devices:
        raise ConfigError(f"config.data.batch_size={config.data.batch_size} and config.data.eval_batch_size="
                          f"{config.data.eval_batch_size} must both be divisible by the {devices} devices")
    if config.data.batch_size % jax.process_count():
        raise ConfigError(f"config.data.batch_size={config.data.batch_size} is not divisible by the "
                          f"{jax.process_count()} processes")


# ---- checkpoints -----------------------------------------------------------------------


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict, read_only: bool = False):
    """Orbax writes each checkpoint into a temporary directory and renames it when
    complete, so a process killed mid-write leaves no step behind, only a temporary
    directory, which the next writing manager removes. `read_only` (evaluation) touches
    nothing, so it is safe beside a running job."""
    import orbax.checkpoint as ocp

    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=config.max_checkpoints, create=True,
                                               cleanup_tmp_directories=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def save_checkpoint(manager, step: int, state, iterator) -> None:
    import grain
    import orbax.checkpoint as ocp

    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               data=grain.checkpoint.CheckpointSave(iterator)), force=True)


def restore_checkpoint(manager, step: int, abstract_state, iterator=None):
    """Restores the state onto the shardings of `abstract_state` (any mesh) and, when an
    iterator is given, its position."""
    import grain
    import orbax.checkpoint as ocp

    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
    return manager.restore(step, args=ocp.args.Composite(**items))["state"]


@jax.jit
def _all_finite(state) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves))


def restore_newest_valid(manager, trainer: Trainer, workdir: str, iterator=None, set_aside: bool = True):
    """(step, state) from the newest checkpoint that restores and is finite, or (0, None)
    when there is none. A checkpoint that fails is reported and, with `set_aside`, moved
    to `workdir/corrupt_checkpoints/` (so that the step can be written again) before the
    next older one is tried."""
    import shutil

    failures = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            state = restore_checkpoint(manager, step, trainer.abstract_state(), iterator)
            if not bool(_all_finite(state)):
                raise FloatingPointError("it holds NaN or inf")
            if failures:
                if set_aside:
                    manager.reload()
                _warn(f"using step {step}, the newest valid checkpoint")
            return step, state
        except Exception as error:  # a corrupted checkpoint fails in many ways (orbax, tensorstore, json)
            message = f"checkpoint of step {step} in {workdir} cannot be restored: {type(error).__name__}: " \
                      f"{str(error).splitlines()[0] if str(error) else ''}"
            if set_aside and jax.process_index() == 0:
                aside = os.path.join(workdir, "corrupt_checkpoints", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                os.makedirs(os.path.dirname(aside), exist_ok=True)
                shutil.move(os.path.join(str(manager.directory), str(step)), aside)
                message += f"; moved to {aside}"
            _warn(message)
            failures.append(step)
    if failures:
        raise RuntimeError(f"no checkpoint in {workdir} can be restored (tried steps {failures}); "
                           f"{'they were moved to corrupt_checkpoints/; ' if set_aside else ''}"
                           f"re-running starts from step 0")
    return 0, None


# ---- logging ---------------------------------------------------------------------------


class Progress:
    """A progress line with loss, steps/s and ETA: redrawn in place on a terminal, one
    plain line per report otherwise (log files, CI)."""

    def __init__(self, total: int, start: int, stream=None):
        import sys

        self.total, self.start = total, start
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()

    def report(self, step: int, loss: float) -> None:
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        filled = int(30 * step / self.total)
        line = (f"[{'#' * filled}{'.' * (30 - filled)}] step {step}/{self.total} loss {loss:.4f} "
                f"{rate:.1f} steps/s ETA {eta:.0f}s")
        self.stream.write(("\r" + line + ("\n" if step == self.total else "")) if self.tty else line + "\n")
        self.stream.flush()


class MetricWriter:
    """TensorBoard event files (tensorboardX: no TensorFlow) plus `metrics.jsonl`; only
    process 0 writes. On resume, history beyond the restored step is dropped."""

    def __init__(self, workdir: str, resume_step: int):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.history: list[dict] = []
        if not self.enabled:
            return
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.history = [r for r in map(json.loads, f) if r["step"] <= resume_step]
        _write_atomically(self.path, "".join(json.dumps(r) + "\n" for r in self.history))
        from tensorboardX import SummaryWriter

        self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.history.append(record)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"train/{name}", float(value), step)

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _warn(message: str) -> None:
    import sys

    if jax.process_index() == 0:
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ---- the loop --------------------------------------------------------------------------


def data_sources(config: ml_collections.ConfigDict, splits: tuple[str, ...]):
    from pmrl_jax.data.registry import make_source

    return {split: make_source(config.data.name, split, **config.data.options.to_dict()) for split in splits}


def example_shapes_of(source) -> dict[str, tuple[int, ...]]:
    from pmrl_jax.data.pipeline import read_batch

    return {k: v.shape[1:] for k, v in read_batch(source, np.zeros(1, np.int64)).items() if k not in ("index", "label")}


def training_iterator(config: ml_collections.ConfigDict, source):
    from pmrl_jax.data import pipeline

    transforms = []
    if config.data.gaussian_noise:
        noisy = tuple(m for m in config.data.modalities if m not in config.data.gaussian_noise_exclude)
        transforms.append(pipeline.GaussianNoise(level=config.data.gaussian_noise, modalities=noisy))
    if config.data.modality_dropout:
        transforms.append(pipeline.ModalityDropout(probability=config.data.modality_dropout,
                                                   modalities=tuple(config.data.modalities)))
    dataset = pipeline.training_dataset(
        source, batch_size=config.data.batch_size // jax.process_count(), seed=config.seed,
        shard_index=jax.process_index(), shard_count=jax.process_count(), transforms=transforms,
        prefetch_threads=config.data.prefetch_threads)
    return iter(dataset)


def check_workdir_config(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a workdir whose checkpoints came from a config with another model or data
    layout: their shapes would not restore."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
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


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Checks the workdir against the config, then writes the resolved config."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir!r} is a file, not a directory")
    check_workdir_config(workdir, config)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        _write_atomically(os.path.join(workdir, "config.json"), config.to_json(indent=2))


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
    resuming from the newest valid checkpoint in `workdir`. The step key is
    fold_in(key(seed), step), so a resumed run draws the same randomness.

    Raises `Preempted` after checkpointing when SIGTERM arrives, and `NonFiniteError`
    (without checkpointing) when a step goes non-finite under `config.nonfinite="stop"`."""
    source = data_sources(config, ("train",))["train"]
    trainer = make_trainer(config, example_shapes_of(source), mesh)
    prepare_workdir(workdir, config)  # after the checks: a rejected config writes nothing
    iterator = training_iterator(config, source)
    manager = checkpoint_manager(workdir, config)
    start, state = restore_newest_valid(manager, trainer, workdir, iterator)
    if start:
        _say(f"resumed from step {start} in {workdir}")
    else:
        state = trainer.init_state()
    writer = MetricWriter(workdir, start)
    progress = Progress(config.num_steps, start)
    base_key = jax.random.key(config.seed)
    t0 = time.perf_counter()
    end = config.num_steps if stop_at is None else min(stop_at, config.num_steps)
    skipped = 0
    try:
        with PreemptionNotice() as preemption:
            for step in range(start, end):
                batch = trainer.global_batch(next(iterator))
                done = step + 1
                with jax.set_mesh(trainer.mesh):
                    state, metrics = trainer.step_fn(trainer.loss_at(step))(
                        state, batch, np.int32(done), jax.random.fold_in(base_key, step))
                log = done % config.log_every == 0 or done == config.num_steps
                preempted = preemption.requested(done)
                save = done % config.checkpoint_every == 0 or done == end or preempted
                if not (log or save):
                    continue
                metrics = jax.device_get(metrics)
                if metrics["skipped_steps"] > skipped:
                    skipped = int(metrics["skipped_steps"])
                    report = describe_nonfinite(trainer.health(state), config.data.modalities)
                    if config.nonfinite == "stop":
                        raise NonFiniteError(f"{report}. Stopped at step {done} without checkpointing it; "
                                             f"the newest checkpoint predates the bad step "
                                             f"(config.nonfinite='skip' drops such steps instead)")
                    _warn(f"skipping non-finite steps ({skipped} so far; the first: {report})")
                if log:
                    writer.write(done, metrics)
                    if jax.process_index() == 0:
                        progress.report(done, float(metrics["loss"]))
                if save:
                    save_checkpoint(manager, done, state, iterator)
                if preempted:
                    manager.wait_until_finished()
                    raise Preempted(done, workdir)
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.close()
    if end > start:
        _say(f"trained steps {start}..{end} in {time.perf_counter() - t0:.1f} s"
             f"{f', {skipped} non-finite steps skipped' if skipped else ''}")
    return trainer, state


def evaluate(config: ml_collections.ConfigDict, workdir: str, trainer: Trainer, state) -> dict:
    """Runs `config.evals` on the evaluation split, writes results.json and, with
    `config.eval.plots`, the PNG plots (pmrl_jax.plots) into the workdir."""
    from pmrl_jax import evaluators

    context = evaluators.EvalContext(config, trainer, state)
    results = {"split": config.data.eval_split, "num_examples": len(context.source(config.data.eval_split)),
               "evals": evaluators.run_evaluators(context)}
    after = _sigma1_over_sqrt_k(context.embedded().embeddings)
    before = _sigma1_over_sqrt_k(evaluators.EvalContext(config, trainer, trainer.init_state(), context.sources)
                                 .embedded().embeddings)
    results["sigma1_over_sqrt_k"] = {"before_training_mean": float(before.mean()), "mean": float(after.mean())}
    if jax.process_index() == 0:
        if config.eval.plots:
            results["plots"] = _write_plots(config, workdir, results, before, after)
        _write_atomically(os.path.join(workdir, "results.json"), json.dumps(results, indent=2))
    return results


def _sigma1_over_sqrt_k(embeddings: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(L.singular_values)(embeddings))[:, 0] / np.sqrt(embeddings.shape[1])


def _write_plots(config, workdir: str, results: dict, before: np.ndarray, after: np.ndarray) -> list[str]:
    from pmrl_jax import plots

    written = [plots.sigma1_histogram(before, after, os.path.join(workdir, "sigma1.png"))]
    evals = results["evals"]
    if "retrieval" in evals:
        table = evals["retrieval"]["any_to_any"]
        written.append(plots.retrieval_heatmap(
            table, list(config.data.modalities), os.path.join(workdir, "retrieval_r1.png"),
            f"{config.loss.name}: any-to-any R@1 ({evals['retrieval']['similarity']}), mean {table['mean']['R@1']:.3f}"))
    if "robustness" in evals:
        written.append(plots.robustness_plot({config.loss.name: evals["robustness"]},
                                             os.path.join(workdir, "robustness.png")))
    if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        written.append(plots.training_curves(os.path.join(workdir, "metrics.jsonl"),
                                             os.path.join(workdir, "training.png")))
    return [os.path.basename(path) for path in written]


def format_results(results: dict) -> str:
    """The printed form of `evaluate`'s results: one table per evaluator."""
    from pmrl_jax import evaluators

    parts = [f"{results['split']} split, {results['num_examples']} examples"]
    parts += [evaluators.EVALUATORS[name]().summary(result) for name, result in results["evals"].items()]
    sigma = results["sigma1_over_sqrt_k"]
    parts.append(f"sigma_1 / sqrt(k), mean over instances: {sigma['before_training_mean']:.3f} before training, "
                 f"{sigma['mean']:.3f} now (1 = every modality aligned)")
    return "\n\n".join(parts)


def latest_state(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                 mesh: jax.sharding.Mesh | None = None):
    """(trainer, state) restored from the newest (or the given) checkpoint of `workdir`."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"workdir {workdir!r} has no checkpoints (looked in {directory})")
    check_workdir_config(workdir, config)
    source = data_sources(config, ("train",))["train"]
    trainer = make_trainer(config, example_shapes_of(source), mesh)
    manager = checkpoint_manager(workdir, config, read_only=True)
    try:
        if step is None:
            step, state = restore_newest_valid(manager, trainer, workdir, set_aside=False)
            if state is None:
                raise FileNotFoundError(f"workdir {workdir!r} has no checkpoint")
        elif step in manager.all_steps():
            state = restore_checkpoint(manager, step, trainer.abstract_state())
        else:
            raise FileNotFoundError(f"workdir {workdir!r} has no checkpoint at step {step}; "
                                    f"it has steps {list(manager.all_steps())}")
    finally:
        manager.close()
    return trainer, state
