"""The base every method config in `configs/` extends (it lives in the package so that
config files written outside this repository can extend it too). Sizes suit the embedded
dataset (UCI Multiple Features: 1,400 train / 200 validation / 400 test digits, six
views) on a 2-core CPU.

Fields left None are decided by the data when the run starts (`pmrl_jax.resolve`): the
modalities (every one the dataset has), the anchor (the first of them), the set queries
(the anchor against all the others, and back), the encoder (`adapter` for inputs that
are already embeddings, `mlp` otherwise), the shared width and the input noise. The run
prints what was chosen and saves the resolved config in its workdir.

Any field can be overridden on the command line, e.g.
    python -m pmrl_jax.main --config=configs/gram.py --config.optimizer.learning_rate=3e-4
    python -m pmrl_jax.main --config=configs/clip.py --config.data.name=features \\
        --config.data.options.directory=DIR --config.loss.anchor=gloss
and `--config=configs/<method>.py:smoke` gives a seconds-long run (tests, CI).
"""

import difflib
import importlib.util
import os

from ml_collections import ConfigDict, config_dict


class ConfigError(ValueError):
    """A configuration that cannot run, found before anything is compiled or written; the
    message names the field. The main job reports it in one line."""


def _data_options() -> ConfigDict:
    """One field per option of every dataset (pmrl_jax.data.registry), all None: a
    dataset takes its own and refuses another's."""
    from pmrl_jax.data.registry import OPTION_TYPES

    return ConfigDict({name: config_dict.placeholder(kind) for name, kind in OPTION_TYPES.items()})


def get_base_config() -> ConfigDict:
    config = ConfigDict()
    config.seed = 0
    config.num_steps = 1500
    config.log_every = 50
    config.checkpoint_every = 500
    config.max_checkpoints = 2                     # >= 2 keeps a fallback if the newest is corrupted
    # A step whose loss or gradient is NaN/inf is never applied. "stop": the run stops at
    # its next log or checkpoint, naming the step and the modalities that went bad (the
    # state stays as before that step). "skip": the step is dropped, counted
    # (metrics: skipped_steps) and training goes on.
    config.nonfinite = "stop"

    config.data = ConfigDict()
    config.data.name = "uci_multiple_features"     # see pmrl_jax.data.registry
    config.data.options = _data_options()          # the dataset's options, e.g. options.directory
    # The rows of each [B, k, d] embedding, in this order. None: every modality of the
    # data (at most `num_modalities` of them, and at most what the loss takes, the anchor
    # among them). A single comma-separated string is split ("gloss,lemmas").
    config.data.modalities = config_dict.placeholder(tuple)
    config.data.num_modalities = config_dict.placeholder(int)
    config.data.batch_size = 256                   # global: split over processes and devices
    config.data.eval_batch_size = 200
    config.data.eval_split = "test"
    config.data.validation_split = "validation"    # model selection (config.eval.every); "" for none
    config.data.prefetch_threads = 2
    # Gaussian noise on the training inputs, as a multiple of each input feature's
    # standard deviation on the train split; and the modalities left clean. None: the
    # dataset's default (0.5 on the embedded data, but `mor`; 0 elsewhere).
    config.data.gaussian_noise = config_dict.placeholder(float)
    config.data.gaussian_noise_exclude = config_dict.placeholder(tuple)
    config.data.modality_dropout = 0.0             # probability a modality's input is zeroed in training

    config.model = ConfigDict()
    config.model.width = 512
    # The shared space's width. None: the inputs' width when every modality is an
    # `adapter` of inputs of one width (so training starts from them), else 128.
    config.model.embed_dim = config_dict.placeholder(int)
    config.model.dtype = "float32"                 # "bfloat16": bf16 compute, float32 parameters
    # The default encoder of every modality (pmrl_jax.models.encoders). kind None: the
    # dataset's default (`adapter` for `features`, else `mlp`). For `adapter`, depth is
    # the number of hidden layers of its zero-initialised residual MLP (0: linear only).
    # A raw-text modality takes a pretrained tower (pmrl_jax.models.pretrained):
    #   encoders.<m> = {kind: "pretrained_text", path: <checkpoint directory>,
    #                   trainable: True (False: locked, as in LiT), learning_rate_multiplier: 1.0,
    #                   max_length: None (the checkpoint's limit)}
    config.model.encoder = ConfigDict(dict(kind=config_dict.placeholder(str), depth=1, dropout=0.0))
    config.model.encoders = ConfigDict()           # per-modality overrides: {modality: {kind, ...}}
    # Standardise each feature-vector modality inside the model with its train-split mean
    # and std (saved with the checkpoint). None: on for `mlp` encoders, off for `adapter`
    # and for the embedded data (standardised by its loader).
    config.model.standardize = config_dict.placeholder(bool)
    config.model.temperature = ConfigDict(dict(initial=0.07, minimum=0.01, maximum=1.0, learnable=True))
    config.model.matching = ConfigDict(dict(enabled=False, weight=0.1, width=128, heads=4, depth=1))

    config.loss = ConfigDict()
    config.loss.name = "clip"                      # see pmrl_jax.objectives
    config.loss.anchor = config_dict.placeholder(str)  # a modality's name; None: the first modality
    config.loss.label_smoothing = 0.0              # the batch-contrastive losses (all but PMRL's)
    config.loss.similarity = "cosine"              # measure for the matching head's hard negatives
    # Each method's own hyperparameters: config.loss.<method>.
    config.loss.pmrl = ConfigDict()
    config.loss.pmrl.alignment_temperature = 0.05      # tau1
    config.loss.pmrl.regularization_temperature = 0.1  # tau2
    config.loss.pmrl.regularization_weight = 1.0       # the weight of L_M'
    # L_M' repels the leading directions over the global batch ("global"), or within
    # each device's rows ("device", as the paper's code: 16 per device there).
    config.loss.pmrl.regularization_scope = "global"
    config.loss.gram = ConfigDict()
    # "volume" (-V / tau, the paper's) or "log_volume" (-log V / tau: the candidate's own
    # volume becomes an additive term; docs/math.md, "GRAM").
    config.loss.gram.volume_logits = "volume"
    # The loss over a ring of devices (pmrl_jax.losses.blocked): no device holds the
    # [B, B] score matrix, for global batches whose matrix does not fit.
    config.loss.blocked = False

    # Optional first stage: train with another loss for this many steps, then with `loss`.
    config.warm_start = ConfigDict(dict(loss="", steps=0))

    config.optimizer = ConfigDict()
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 100
    config.optimizer.decay = "cosine"              # "cosine" or "linear" to 0 at num_steps
    config.optimizer.weight_decay = 1e-4           # not applied to biases, norms or the temperature
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.grad_clip_norm = 1.0          # 0 disables clipping

    # Several processes (hosts): see pmrl_jax/distributed.py. Off by default.
    config.distributed = ConfigDict(dict(coordinator_address="", num_processes=1, process_id=0, auto=False))

    config.mesh = ConfigDict()
    config.mesh.data = -1                          # -1: every device not used by fsdp
    config.mesh.fsdp = 1
    config.mesh.fsdp_min_size = 2**18              # parameters with fewer elements stay replicated

    # Evaluators run on data.eval_split after training and by --mode=eval (pmrl_jax.evaluation);
    # each reads its own section config.eval.<name>.
    config.evals = ("retrieval", "classification", "robustness")   # and "rerank" (needs the matching head)
    config.eval = ConfigDict()
    # Model selection: every `every` steps (and at the start of the final loss's stage),
    # mean any-to-any R@1 on the validation split; the best step is kept as its own
    # checkpoint and the final evaluation uses it. 0 turns it off (the last step is used).
    config.eval.every = 100
    config.eval.patience = 0                       # stop after this many evaluations without a better one; 0: never
    # What selection scores: "" for the mean any-to-any R@1 above, or the R@1 of one set
    # query (e.g. "pix->fac+kar+fou+zer+mor") by `select_similarity` (None: eval.similarity).
    config.eval.select_query = ""
    config.eval.select_similarity = config_dict.placeholder(str)
    # The measure of any-to-any retrieval, of model selection and of Run.search
    # (pmrl_jax.losses registry).
    config.eval.similarity = "cosine"
    config.eval.tile = 1024                        # candidates per scoring block (memory: rows/devices x tile)
    config.eval.plots = True                       # PNGs in the workdir
    config.eval.retrieval = ConfigDict()
    # e.g. ("pix->fac+kar", "fac+kar->pix"). None: the anchor against the first 1, 2, ..
    # of the other modalities (GRAM's t->v, t->va, t->vas: missing modalities at test
    # time), and all of them against the anchor (k >= 3); () for none.
    config.eval.retrieval.set_queries = config_dict.placeholder(tuple)
    # The measures set queries are scored by (pmrl_jax.losses registry), each in turn.
    config.eval.retrieval.set_similarities = ("cosine", "mean_cosine", "volume", "normalized_volume", "sigma1")
    config.eval.rerank = ConfigDict(dict(top_k=50))  # candidates the matching head re-scores
    # Noise std levels, as multiples of each input feature's std on the train split.
    config.eval.robustness = ConfigDict(dict(noise_levels=(0.0, 0.5, 1.0, 2.0)))
    # A .npy with one input of `description_modality` per class, in label order (e.g. the
    # token ids of "a photo of a <class>"), embedded as zero-shot prototypes; "": none.
    config.eval.classification = ConfigDict(dict(descriptions="", description_modality=""))
    return config


def smoke(config: ConfigDict) -> ConfigDict:
    """Shrinks a config to a seconds-long run that exercises every code path."""
    config.num_steps = 6
    config.log_every = 2
    config.checkpoint_every = 3
    config.data.batch_size = 32
    config.data.eval_batch_size = 64
    config.data.num_modalities = 3                 # three modalities keep compilation short
    config.eval.every = 3
    config.eval.robustness.noise_levels = (0.0, 1.0)
    config.model.width = 32
    config.optimizer.warmup_steps = 2
    if config.warm_start.steps:
        config.warm_start.steps = 3
    return config


def finalize(config: ConfigDict, arg: str | None) -> ConfigDict:
    """Applies the config argument (`--config=configs/gram.py:ARG`): none or "smoke"."""
    if arg in (None, ""):
        return config
    if arg == "smoke":
        return smoke(config)
    raise ValueError(f"unknown config argument {arg!r}; known: 'smoke'")


def load_config_file(argument: str) -> ConfigDict:
    """The config that `--config=ARGUMENT` gives, for ARGUMENT = "path/to/file.py[:arg]":
    the file's `get_config(arg)`."""
    path, _, arg = argument.partition(":")
    name = "pmrl_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise FileNotFoundError(f"config file {path!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def unknown_field(config: ConfigDict, path: str) -> str | None:
    """Why `config.<path>` (dotted, as in a `--config.<path>=...` override) names no field,
    with the fields its parent has; None when it names one."""
    node, parents = config, ["config"]
    for name in path.split("."):
        if not isinstance(node, ConfigDict):
            return f"{'.'.join(parents)} holds a value ({node!r}), not a section with fields"
        if name not in node:
            fields = sorted(node.keys())
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            return f"{'.'.join(parents)} has no field {name!r}; {hint}its fields: {', '.join(fields)}"
        node = node[name]
        parents.append(name)
    return None


def encoder_options(config: ConfigDict) -> dict[str, dict]:
    """{modality: the encoder's options}: `config.model.encoder`, updated by the
    modality's entry in `config.model.encoders`. Before the modalities are resolved
    (`config.data.modalities` None), the modalities `config.model.encoders` names."""
    modalities = config.data.modalities
    if modalities is None:
        modalities = tuple(config.model.encoders)
    unknown = set(config.model.encoders) - set(modalities)
    if unknown:
        raise ConfigError(f"config.model.encoders names {sorted(unknown)}, which are not in config.data.modalities "
                          f"{list(modalities)}")
    options = {}
    for name in modalities:
        merged = config.model.encoder.to_dict()
        merged.update(config.model.encoders[name].to_dict() if name in config.model.encoders else {})
        options[name] = merged
    return options
