"""Loads the repository's config files the way `--config=configs/<name>.py:<arg>` does."""

import pathlib

from pmrl_jax.configs import load_config_file

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
METHODS = ("clip", "all_pairs", "gram", "pmrl", "symile", "triangle")


def load_config(name: str, arg: str | None = "smoke"):
    return load_config_file(f"{CONFIG_DIR / name}.py{':' + arg if arg else ''}")


def one_device_mesh():
    """A mesh of the first device alone: for tests of what a run computes rather than how
    it is sharded (the 1-vs-8-device tests cover that), at about half the compile time."""
    import jax

    from pmrl_jax import sharding

    return sharding.make_mesh(devices=jax.devices()[:1])
