"""Loads the repository's config files the way `--config=configs/<name>.py:<arg>` does."""

import importlib.util
import pathlib

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
METHODS = ("clip", "gram", "pmrl", "symile", "triangle")


def load_config(name: str, arg: str | None = "smoke"):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", CONFIG_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
