"""Loads the repository's config files the way `--config=configs/<name>.py:<arg>` does."""

import pathlib

from pmrl_jax.configs import load_config_file

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
METHODS = ("clip", "all_pairs", "gram", "pmrl", "symile", "triangle")


def load_config(name: str, arg: str | None = "smoke"):
    return load_config_file(f"{CONFIG_DIR / name}.py{':' + arg if arg else ''}")
