"""The training state and the compiled step.

The state is `nnx.state((model, optimizer, health))`: a pytree of arrays beside a static
graph definition. The step is a pure function of (state, global batch, step number, key),
compiled once per loss with explicit in/out shardings and the state donated. The loss
sees the global batch: the batch is sharded on the mesh's data axes and the compiler
(GSPMD) inserts the collectives, so every negative on every device contributes to the
gradient.

One step, in order: the model embeds the batch (dropout keyed by the step), the objective
scores the embeddings (`pmrl_jax.objectives`), the matching head adds its loss on hard
negatives, the gradient's global norm decides whether the update is applied (a
non-finite loss or gradient never is), and the optimizer updates the parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from pmrl_jax import losses as L
from pmrl_jax import sharding
from pmrl_jax.configs import ConfigError, encoder_options
from pmrl_jax.models import MultimodalModel, matching_loss
from pmrl_jax.objectives import anchor_index, objective_fn, split_anchor
from pmrl_jax.optimizer import make_optimizer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_statistics(config: ml_collections.ConfigDict, shapes: Mapping[str, tuple[int, ...]],
                     statistics: Mapping[str, tuple] | None) -> dict[str, tuple]:
    """The (mean, std) the model standardises with: for every feature-vector modality when
    `config.model.standardize`, constant features left unscaled; zeros and ones where
    `statistics` is None (the values then come from a checkpoint)."""
    if not config.model.standardize:
        return {}
    chosen = {}
    kinds = {name: options["kind"] for name, options in encoder_options(config).items()}
    for name in config.data.modalities:
        if len(shapes[name]) != 1 or kinds[name] == "pretrained_text":  # token ids are not standardised
            continue
        if statistics is None or name not in statistics:
            chosen[name] = (np.zeros(shapes[name], np.float32), np.ones(shapes[name], np.float32))
        else:
            mean, std = statistics[name]
            chosen[name] = (mean, np.where(std > 1e-8, std, 1.0).astype(np.float32))
    return chosen


def build_model(config: ml_collections.ConfigDict, shapes: Mapping[str, tuple[int, ...]], rngs: nnx.Rngs,
                statistics: Mapping[str, tuple] | None = None) -> MultimodalModel:
    matching = config.model.matching
    try:
        return MultimodalModel(
            config.data.modalities, shapes, encoder_options(config), width=config.model.width,
            embed_dim=config.model.embed_dim, temperature=config.model.temperature.to_dict(),
            matching=dict(width=matching.width, heads=matching.heads, depth=matching.depth) if matching.enabled else None,
            statistics=model_statistics(config, shapes, statistics), dtype=DTYPES[config.model.dtype], rngs=rngs,
        )
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.model: {error}") from None


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


def _apply_update(model, optimizer, grads) -> None:
    optimizer.update(model, grads)


def _skip_update(model, optimizer, grads) -> None:
    del model, optimizer, grads


def global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


@dataclasses.dataclass
class Trainer:
    """Everything the loop needs, built once from the (resolved) config and the mesh.
    `statistics` are the train split's per-feature (mean, std), host arrays: the model
    standardises with them and the input noise is scaled by them."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    state_shardings: object
    batch_sharding: jax.sharding.NamedSharding
    example_shapes: dict
    statistics: dict | None = None
    _compiled: dict = dataclasses.field(default_factory=dict, repr=False)

    def build_objects(self):
        """(model, optimizer, health): the objects whose `nnx.state` is the training state."""
        model = build_model(self.config, self.example_shapes, nnx.Rngs(self.config.seed), self.statistics)
        return (model, nnx.Optimizer(model, make_optimizer(self.config), wrt=nnx.Param),
                TrainingHealth(len(self.config.data.modalities)))

    def _initial_state(self):
        return nnx.state(self.build_objects())

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

    def health(self, state) -> TrainingHealth:
        return nnx.merge(self.graphdef, state)[2]

    def forward_fn(self, tokens: bool = False):
        """The compiled inference forward: (state, batch) -> (embeddings, {modality:
        tokens} if `tokens` else {}), compiled once per trainer."""
        key = ("forward", tokens)
        if key not in self._compiled:
            def forward(state, batch):
                z, token_dict = self.model(state)(batch)
                return z, (token_dict if tokens else {})

            self._compiled[key] = jax.jit(forward, in_shardings=(self.state_shardings, self.batch_sharding))
        return self._compiled[key]

    def step_fn(self, loss_name: str):
        """The compiled training step for one loss: (state, batch, step, key) -> (state,
        metrics), `step` being the 1-based number of the step (it names a non-finite one)."""
        if loss_name not in self._compiled:
            self._compiled[loss_name] = self._make_step(loss_name)
        return self._compiled[loss_name]

    def _make_step(self, loss_name: str):
        config, graphdef = self.config, self.graphdef
        loss_fn = objective_fn(loss_name, config, self.mesh.size)
        anchor = anchor_index(config)
        modalities = list(config.data.modalities)
        others = [m for i, m in enumerate(modalities) if i != anchor]
        matching_weight = config.model.matching.weight if config.model.matching.enabled else 0.0
        similarity = L.get_similarity(config.loss.similarity)
        skip_nonfinite = config.nonfinite == "skip"

        def step(state, batch, step_number, key):
            model, optimizer, health = nnx.merge(graphdef, state)
            dropout_key, negatives_key = jax.random.split(key)

            def objective(model):
                z, tokens = model(batch, rngs=nnx.Rngs(dropout=dropout_key))
                contrastive, known_scores = loss_fn(z, model.temperature())
                metrics = {"contrastive_loss": contrastive}
                total = contrastive
                if matching_weight:
                    scores = known_scores.get(config.loss.similarity)
                    if scores is None:
                        anchor_z, others_z = split_anchor(z, anchor)
                        scores = similarity(anchor_z[:, None], others_z)
                    match = matching_loss(model.matching, tokens[modalities[anchor]],
                                          jnp.concatenate([tokens[m] for m in others], axis=1),
                                          scores, negatives_key, model.temperature())
                    metrics["matching_loss"] = match
                    total = total + matching_weight * match
                return total, (metrics, ~jnp.all(jnp.isfinite(z), axis=(0, 2)))

            (loss, (metrics, bad_embeddings)), grads = nnx.value_and_grad(objective, has_aux=True)(model)
            grad_norm = global_norm(grads)
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            # Under "stop", nothing is applied after the first non-finite step: the loop
            # stops at its next check with the state as it was before that step. A cond,
            # not a select over the state: a select reads and writes every parameter and
            # moment once more.
            apply = finite if skip_nonfinite else finite & (health.skipped_steps[...] == 0)
            nnx.cond(apply, _apply_update, _skip_update, model, optimizer, grads)

            first = ~finite & (health.skipped_steps[...] == 0)
            health.first_bad_step[...] = jnp.where(first, step_number, health.first_bad_step[...])
            health.bad_inputs[...] = jnp.where(first, jnp.stack([~jnp.all(jnp.isfinite(batch[m])) for m in modalities]),
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
        """The loss trained at (0-based) `step`: the warm start's, then `config.loss.name`."""
        warm = self.config.warm_start
        return warm.loss if warm.loss and step < warm.steps else self.config.loss.name

    def global_batch(self, local_batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows -> global arrays sharded on the data axes."""
        return {name: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local_batch[name]))
                for name in self.config.data.modalities}


def make_trainer(config: ml_collections.ConfigDict, example_shapes: Mapping[str, tuple[int, ...]],
                 mesh: jax.sharding.Mesh | None = None, statistics: Mapping[str, tuple] | None = None) -> Trainer:
    """The trainer for a resolved `config` on `mesh` (default: `config.mesh` over every
    device); a given mesh needs the axes `data` and `fsdp`, and runs with them as Auto
    axes (`sharding.training_mesh`). `statistics`: the train split's per-feature (mean,
    std) (`pipeline.feature_statistics`); None when a checkpoint will provide them."""
    from pmrl_jax.checks import validate

    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp) if mesh is None else sharding.training_mesh(mesh)
    validate(config, example_shapes, mesh.size)
    shapes = {k: tuple(v) for k, v in example_shapes.items()}
    trainer = Trainer(config, mesh, None, None, sharding.batch_sharding(mesh), shapes,
                      None if statistics is None else dict(statistics))
    graphdef, abstract = nnx.split(nnx.eval_shape(trainer.build_objects))
    trainer.graphdef = graphdef
    trainer.state_shardings = sharding.state_shardings(abstract, mesh, config.mesh.fsdp_min_size)
    return trainer
