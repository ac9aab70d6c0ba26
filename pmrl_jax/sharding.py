"""The device mesh and the shardings of parameters and batches, from the config.

Mesh axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose devices
also split the large parameters and their optimizer state). A batch is split on its
leading axis over both; a parameter with at least `fsdp_min_size` elements is split over
`fsdp` along its largest dimension that the fsdp size divides; everything else is
replicated. The compiler (GSPMD) inserts the gathers.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from pmrl_jax.configs import ConfigError

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else list(devices)
    n = len(devices)
    if fsdp < 1 or n % fsdp:
        raise ConfigError(f"config.mesh.fsdp={fsdp} must be >= 1 and divide the {n} devices")
    if data == -1:
        data = n // fsdp
    if data * fsdp != n:
        raise ConfigError(f"config.mesh.data={data} x config.mesh.fsdp={fsdp} != {n} devices")
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def training_mesh(mesh: jax.sharding.Mesh) -> jax.sharding.Mesh:
    """A user's mesh, checked and made the trainer's kind: axes named `data` and `fsdp`
    (in any order, of any sizes), all of type Auto.

    A mesh with Explicit axes (`jax.make_mesh`'s default on current JAX) comes back as the
    same devices and axis names with Auto axes: the training step leaves the collectives
    to the compiler, and under Explicit axes its unannotated ops (the model's gathers, the
    losses' products) fail at trace time."""
    if not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if sorted(mesh.axis_names) != sorted(BATCH_AXES):
        raise ValueError(
            f"the training mesh needs exactly the axes {BATCH_AXES}, got {tuple(mesh.axis_names)}; build one with "
            f"pmrl_jax.sharding.make_mesh(data, fsdp, devices) or jax.make_mesh(shape, {BATCH_AXES})"
        )
    if all(axis_type == AxisType.Auto for axis_type in mesh.axis_types):
        return mesh
    return mesh.update(axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def parameter_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            return P(*([None] * axis + ["fsdp"]))
    return P()


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, min_size: int):
    """Shardings for every leaf of a (possibly abstract) state pytree."""
    fsdp_size = mesh.shape["fsdp"]

    def leaf(x):
        return NamedSharding(mesh, parameter_spec(tuple(getattr(x, "shape", ())), fsdp_size, min_size))

    return jax.tree.map(leaf, abstract_state)
