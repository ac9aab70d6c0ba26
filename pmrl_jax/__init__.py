"""pmrl_jax: align many modalities in one embedding space with JAX.

`pmrl_jax.losses` holds the pure loss kernels and similarity measures and imports only
jax; the training framework lives in the other submodules and is imported on demand.
"""

__version__ = "0.1.0"
