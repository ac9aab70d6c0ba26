"""The main job: train, then evaluate retrieval on the test split.

    python -m pmrl_jax.main --config=configs/gram.py [--workdir=runs/gram]
    python -m pmrl_jax.main --config=configs/gram.py:smoke --config.num_steps=20
    python -m pmrl_jax.main --config=configs/gram.py --workdir=runs/gram --mode=eval [--step=N]
    python -m pmrl_jax.main --workdir=runs/gram --mode=embed --output=OUT [--input=DIR] [--float16]

The first printed line says what was decided for the fields the config leaves to the
data (modalities, anchor, encoder, ...). With model selection on (`config.eval.every`),
the evaluation uses the step with the best mean validation R@1.

Re-running the same command in the same workdir resumes from its newest valid checkpoint
(after kill -9, SIGTERM, which checkpoints before exiting with status 143, or a corrupted
newest checkpoint, which is moved to corrupt_checkpoints/). The
workdir receives checkpoints, TensorBoard event files, metrics.jsonl, config.json and
results.json.
"""

from __future__ import annotations

import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "a config file, optionally with `:arg`", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "where checkpoints, logs and results go "
                               "(default: runs/<config name>[_<arg>])")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "embed"],
                          "train (then evaluate), evaluate a checkpoint, or embed data with a trained run")
_STOP_AT = flags.DEFINE_integer("stop_at", None, "with --mode=train: stop (checkpointed) after this step; "
                                "re-running without it resumes", lower_bound=1)
_STEP = flags.DEFINE_integer("step", None, "with --mode=eval or embed: the checkpoint step (default: the model "
                             "selection's best, else the newest)")
_INPUT = flags.DEFINE_string("input", None, "with --mode=embed: a features directory to embed (default: the run's "
                             "own dataset)")
_OUTPUT = flags.DEFINE_string("output", None, "with --mode=embed: the directory to write (it must not exist)")
_FLOAT16 = flags.DEFINE_bool("float16", False, "with --mode=embed: write float16 embeddings")


def default_workdir(config_argument: str) -> str:
    path, _, arg = config_argument.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{name}_{arg}" if arg else name)


def parse_flags(argv):
    """absl's flag parsing, except that an override `--config.<path>=...` naming no field
    of the config ends the run with one line that names the flag and the fields there are
    (ml_collections raises a bare KeyError or AttributeError from inside flag parsing)."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):
        reason = _explain_unknown_override(argv)
        if reason is None:  # not an unknown field (a bug in a config file, say): the error as raised
            raise
        raise SystemExit(f"pmrl_jax: {reason}") from None


def _explain_unknown_override(argv) -> str | None:
    from pmrl_jax.configs import load_config_file, unknown_field

    arguments = [a for a in argv[1:] if a.startswith("--config")]
    files = [a.split("=", 1)[1] for a in arguments if a.startswith("--config=")]
    try:
        config = load_config_file(files[-1])
    except Exception:  # the diagnosis is best effort: without it, the caller re-raises the parser's error
        return None
    for argument in arguments:
        if argument.startswith("--config."):
            reason = unknown_field(config, argument.split("=", 1)[0][len("--config."):])
            if reason:
                return f"{argument}: {reason}"
    return None


def describe(config, choices, workdir: str) -> str:
    """The run's first printed line: what runs, on what, and what was decided for it."""
    import jax

    warm = config.warm_start
    data = config.data.name + (f" ({config.data.options.directory})" if config.data.options.directory else "")
    return (f"pmrl_jax: loss {config.loss.name}{f' (after {warm.steps} steps of {warm.loss})' if warm.loss else ''} "
            f"on {data}; {'; '.join(choices) if choices else f'modalities {list(config.data.modalities)}'}; "
            f"{config.num_steps} steps, {jax.device_count()} {jax.default_backend()} device(s), workdir {workdir}")


def embed(argv) -> None:
    """--mode=embed: the run in --workdir alone (no --config) writes its embeddings."""
    from pmrl_jax.export import export
    from pmrl_jax.run import RunError, load

    if not _WORKDIR.value or not _OUTPUT.value:
        raise app.UsageError("--mode=embed needs --workdir (a trained run) and --output")
    try:
        run = load(_WORKDIR.value, _STEP.value)
        print(f"pmrl_jax: embedding with the run in {_WORKDIR.value} (step {run.step}, modalities "
              f"{list(run.modalities)}) into {_OUTPUT.value}", flush=True)
        manifest = export(run, _OUTPUT.value, _INPUT.value, _FLOAT16.value)
    except (RunError, FileNotFoundError) as error:
        raise SystemExit(f"pmrl_jax: {error}") from None
    written = ", ".join(f"{split}: {counts['rows']} rows" for split, counts in manifest["splits"].items())
    print(f"wrote {written} ({manifest['dtype']}, d = {manifest['embed_dim']}) and "
          f"{os.path.join(_OUTPUT.value, 'manifest.json')}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax and jax report every step at INFO
    if _MODE.value == "embed":
        return embed(argv)
    if _CONFIG.value is None:
        raise app.UsageError("--config is required for --mode=train and --mode=eval")
    import jax

    from pmrl_jax import distributed, evaluation, train
    from pmrl_jax.data.features import FeaturesError
    from pmrl_jax.resolve import prepare

    config = _CONFIG.value
    distributed.initialize(config)  # before anything touches a device
    # The flag as given (path and ":arg"), so that `gram.py:smoke` gets its own workdir.
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].serialize().split("=", 1)[1])
    try:
        prepared = prepare(config)
        config = prepared.config
        if jax.process_index() == 0:
            print(describe(config, prepared.choices, workdir), flush=True)
        if _MODE.value == "train":
            trainer, _ = train.train(config, workdir, _STOP_AT.value)
            state, record = train.selected_state(trainer, workdir)
        elif _STEP.value is None:
            trainer = train.restoring_trainer(config, workdir)
            state, record = train.selected_state(trainer, workdir)
        else:
            trainer, state = train.latest_state(config, workdir, _STEP.value)
            record = None
    except train.Preempted as preempted:
        if jax.process_index() == 0:
            print(f"pmrl_jax: {preempted}", flush=True)
        raise SystemExit(143) from None  # 128 + SIGTERM, as if the signal had ended the process
    except (train.NonFiniteError, train.ConfigError, FeaturesError, FileNotFoundError) as error:
        raise SystemExit(f"pmrl_jax: {error}") from None
    results = evaluation.evaluate(trainer, state, workdir, record)
    if jax.process_index() == 0:
        print(evaluation.format_results(results))
        print(f"results: {os.path.join(workdir, 'results.json')}"
              f"{'; plots: ' + ', '.join(results['plots']) if results.get('plots') else ''}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
