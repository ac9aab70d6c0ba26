"""The study (`python -m pmrl_jax.study --config=configs/study.py`): every method config
of this folder with equal step budgets, on the embedded data and, given
`--config.features_directory=DIR`, on a features directory; three seeds.

`:smoke` is a minute's check of the command: clip and gram, two seeds, the methods'
smoke configs.

`:from_scratch` asks why GRAM and PMRL trained from scratch do worse than after an
InfoNCE warm start: each with warm-start steps 0, 50 and 200 (the method configs use
1400, the main study's rows), k = 3 against k = 6, fixed temperatures, and for GRAM the
`-log V` logits and pairwise retrieval scored by the volume, and model selection by the
anchor-against-the-rest query instead of pairwise retrieval, on the embedded data; two
seeds, retrieval only."""

import os

from ml_collections import ConfigDict


def _variant(method, **overrides):
    return ConfigDict(dict(method=method, overrides=ConfigDict(overrides)))


def from_scratch_variants() -> ConfigDict:
    variants = ConfigDict()
    for method in ("gram", "pmrl"):
        for steps in (0, 50, 200):
            variants[f"{method}_warm{steps}"] = _variant(method, warm_start=dict(steps=steps))
        variants[f"{method}_warm0_k3"] = _variant(
            method, warm_start=dict(steps=0), data=dict(num_modalities=3))
        for tau in (0.01, 0.03, 0.07):
            if method == "gram":   # the learned temperature held fixed
                fixed = dict(model=dict(temperature=dict(initial=tau, minimum=min(tau, 0.01), learnable=False)))
            else:                  # PMRL's alignment temperature (tau1) is a fixed hyperparameter
                fixed = dict(loss=dict(pmrl=dict(alignment_temperature=tau)))
            variants[f"{method}_warm0_tau{tau * 100:03.0f}"] = _variant(method, warm_start=dict(steps=0), **fixed)
    variants["gram_warm0_log_volume"] = _variant("gram", warm_start=dict(steps=0),
                                                 loss=dict(gram=dict(volume_logits="log_volume")))
    # Model selection by the set query, each method's own measure, rather than by pairwise
    # cosine (which keeps choosing the warm start's last InfoNCE step).
    everything_but_the_anchor = "pix->fac+kar+fou+zer+mor"
    for method, measure in (("gram", "volume"), ("pmrl", "sigma1")):
        variants[f"{method}_warm200_select_{measure}"] = _variant(
            method, warm_start=dict(steps=200), eval=dict(select_query=everything_but_the_anchor,
                                                          select_similarity=measure))
    # Pairwise retrieval and model selection by the volume (of two unit vectors: |sin|,
    # blind to a view's sign as GRAM's loss is) rather than by the cosine.
    variants["gram_warm0_by_volume"] = _variant("gram", warm_start=dict(steps=0), eval=dict(similarity="volume"))
    return variants


def get_config(arg=None):
    config = ConfigDict()
    config.method_configs = os.path.dirname(os.path.abspath(__file__))  # configs/<method>.py
    config.methods = ("clip", "all_pairs", "gram", "pmrl", "symile", "triangle")
    # More rows: {label: {method: NAME, overrides: {nested config fields}}}, e.g. a method
    # with another warm start. Labels name the rows and the run folders.
    config.variants = ConfigDict()
    # The set measures reported (each run scores every one of its config.eval.retrieval.set_similarities).
    config.set_similarities = ("cosine", "mean_cosine", "volume", "normalized_volume", "sigma1")
    config.seeds = (0, 1, 2)
    config.embedded = True                 # the embedded data (UCI Multiple Features)
    config.features_directory = ""         # and a features directory, e.g. the WordNet views
    # Config fields set in every run, nested: --config.overrides="{'optimizer': {'learning_rate': 3e-4}}"
    config.overrides = ConfigDict()
    # --publish writes docs/<report>.md; the main study's ("results") also the README's section.
    config.report = "results"
    config.smoke = arg == "smoke"
    if config.smoke:
        config.methods, config.seeds = ("clip", "gram"), (0, 1)
    elif arg == "from_scratch":
        config.methods, config.seeds = ("clip",), (0, 1)
        config.variants = from_scratch_variants()
        config.overrides = ConfigDict(dict(evals=("retrieval",)))
        config.report = "from_scratch"
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; known: 'smoke', 'from_scratch'")
    return config
