"""Datasets and input pipelines. Submodules are imported on demand so that
`import pmrl_jax.data` stays light."""
