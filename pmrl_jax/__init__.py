"""pmrl_jax: align many modalities in one embedding space with JAX.

`pmrl_jax.losses` holds the pure loss kernels and similarity measures and imports only
jax; the training framework lives in the other submodules and is imported on demand.
`pmrl_jax.load(workdir)` restores a trained run to embed and search with
(`pmrl_jax.run`).
"""

__version__ = "0.1.0"


def load(workdir: str, step: int | None = None, mesh=None):
    """The trained run in `workdir` (`pmrl_jax.run.load`): `run.embed({modality: array})`
    and `run.search(queries, index, k)`."""
    from pmrl_jax.run import load as load_run

    return load_run(workdir, step, mesh)
