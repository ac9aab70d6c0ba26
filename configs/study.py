"""The study (`python -m pmrl_jax.study --config=configs/study.py`): every method config
of this folder with equal step budgets, on the embedded data and, given
`--config.features_directory=DIR`, on a features directory; three seeds.

`:smoke` is a minute's check of the command: clip and gram, two seeds, the methods'
smoke configs."""

import os

from ml_collections import ConfigDict


def get_config(arg=None):
    config = ConfigDict()
    config.method_configs = os.path.dirname(os.path.abspath(__file__))  # configs/<method>.py
    config.methods = ("clip", "all_pairs", "gram", "pmrl", "symile", "triangle")
    # The set measures reported (each run scores every one of its config.eval.set_similarities).
    config.set_similarities = ("cosine", "mean_cosine", "volume", "normalized_volume", "sigma1")
    config.seeds = (0, 1, 2)
    config.embedded = True                 # the embedded data (UCI Multiple Features)
    config.features_directory = ""         # and a features directory, e.g. the WordNet views
    # Config fields set in every run, nested: --config.overrides="{'optimizer': {'learning_rate': 3e-4}}"
    config.overrides = ConfigDict()
    config.smoke = arg == "smoke"
    if config.smoke:
        config.methods, config.seeds = ("clip", "gram"), (0, 1)
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; known: 'smoke'")
    return config
