"""The study: every method on every dataset, several seeds, the same tasks, one table.

    python -m pmrl_jax.study --config=configs/study.py [--workdir=runs/study]
        [--config.features_directory=DIR]   # also a features directory (e.g. the WordNet views)
    python -m pmrl_jax.study --config=configs/study.py:smoke   # a minute: tiny runs, two seeds

Each run is the training job itself (`configs/<method>.py`, with the dataset's and the
seed's overrides): it trains with the method's equal step budget, selects its step on
validation, and evaluates on the test split. The study then writes `results.md` (mean
+- standard deviation over the seeds, one row per method, the frozen inputs first where
they can be compared) and `robustness_<dataset>.png` into its workdir, and
`results.json` with every run's figures. A run already done (its `study_run.json` is
there) is read back, not trained again, so an interrupted study resumes. With
`--publish=.` (the repository root) it also writes `docs/<config.report>.md` with its
plots and, for the main study (`report = "results"`), the README's results section: the
README's figures come from this command.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "the study's config file, e.g. configs/study.py")
_WORKDIR = flags.DEFINE_string("workdir", "runs/study", "where the runs, results.md and the plots go")
_PUBLISH = flags.DEFINE_string("publish", None, "a repository root: also write its docs/<report>.md (and plots) "
                               "and the README's results section between its <!-- results --> markers")

RUN_FILE = "study_run.json"


def datasets(study) -> dict[str, dict]:
    """{dataset label: dotted config overrides}: the embedded data, and the features
    directory when one is given."""
    from pmrl_jax.configs import ConfigError

    chosen = {}
    if study.embedded:
        chosen["uci_multiple_features"] = {}
    if study.features_directory:
        chosen[os.path.basename(os.path.normpath(study.features_directory))] = {
            "data.name": "features", "data.options.directory": study.features_directory}
    if not chosen:
        raise ConfigError("the study has no dataset: config.embedded is False and no config.features_directory")
    return chosen


def _dotted(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def rows(study) -> dict[str, tuple[str, dict]]:
    """{row label: (method, dotted overrides)}: each of `study.methods` as its config is,
    then each of `study.variants` (a method's config with the variant's overrides)."""
    from pmrl_jax.configs import ConfigError

    chosen = {method: (method, {}) for method in study.methods}
    for label, variant in study.variants.items():
        if label in chosen:
            raise ConfigError(f"config.variants.{label} has the name of a method of config.methods")
        if set(variant) != {"method", "overrides"}:
            raise ConfigError(f"config.variants.{label} needs exactly the fields 'method' and 'overrides'; "
                              f"got {sorted(variant)}")
        chosen[label] = (variant.method, _dotted(variant.overrides.to_dict()))
    if not chosen:
        raise ConfigError("the study has nothing to run: config.methods and config.variants are empty")
    return chosen


def run_config(study, method: str, overrides: dict, seed: int):
    from pmrl_jax.configs import ConfigError, load_config_file

    config = load_config_file(os.path.join(study.method_configs, f"{method}.py") + (":smoke" if study.smoke else ""))
    for path, value in {**overrides, **_dotted(study.overrides.to_dict()), "seed": seed}.items():
        *parents, key = path.split(".")
        node = config
        for parent in parents:
            if parent not in node:
                raise ConfigError(f"study override {path}: the config of {method!r} has no field {parent!r}")
            node = node[parent]
        if key not in node:
            raise ConfigError(f"study override {path}: the config of {method!r} has no field {key!r}")
        node[key] = value
    return config


def run_one(config, workdir: str) -> dict:
    """Trains, selects and evaluates one run (the training job's steps); the figures the
    study reads, also written to `workdir/study_run.json`."""
    from pmrl_jax import evaluation, train
    from pmrl_jax.workdir import write_atomically

    path = os.path.join(workdir, RUN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    start = time.perf_counter()
    trainer, _ = train.train(config, workdir)
    seconds = time.perf_counter() - start
    state, record = train.selected_state(trainer, workdir)
    results = evaluation.evaluate(trainer, state, workdir, record)
    figures = {"figures": figures_of(results, trainer.config), "train_seconds": seconds,
               "config": {"loss": trainer.config.loss.name, "anchor": trainer.config.loss.anchor,
                          "modalities": list(trainer.config.data.modalities), "num_steps": trainer.config.num_steps,
                          "seed": trainer.config.seed}}
    write_atomically(path, json.dumps(figures, indent=2))
    return figures


def _label(direction: str, anchor: str, others: int) -> str:
    """"anchor->rest", "rest->anchor", or "anchor->j" for the anchor against j others."""
    query, _, candidates = direction.partition("->")
    if query != anchor:
        return "rest->anchor"
    count = len(candidates.split("+"))
    return "anchor->rest" if count == others else f"anchor->{count}"


def figures_of(results: dict, config) -> dict:
    """{column: value} of one run's results, and {"frozen/" + column: value} for the inputs."""
    evals, anchor = results["evals"], config.loss.anchor
    others = len(config.data.modalities) - 1
    retrieval = evals["retrieval"]
    figures = {"pairwise R@1": retrieval["any_to_any"]["mean"]["R@1"]}
    for measure, table in retrieval["set_queries"].items():
        for direction, row in table.items():
            figures[f"{_label(direction, anchor, others)} R@1 ({measure})"] = row["R@1"]
    frozen = retrieval.get("frozen", {})
    if "any_to_any" in frozen:
        figures["frozen/pairwise R@1"] = frozen["any_to_any"]["mean"]["R@1"]
        for measure, table in frozen["set_queries"].items():
            for direction, row in table.items():
                figures[f"frozen/{_label(direction, anchor, others)} R@1 ({measure})"] = row["R@1"]
    for prefix, source in (("", retrieval), ("frozen/", frozen)):
        cosines = source.get("positive_cosine")
        if cosines:
            figures[f"{prefix}own views' cosine (mean)"] = float(np.mean(list(cosines.values())))
            figures[f"{prefix}own views' cosine (lowest pair)"] = min(cosines.values())
    for direction, value in evals.get("rerank", {}).items():
        if isinstance(value, dict):
            figures[f"{_label(direction, anchor, others)} R@1 (re-ranked)"] = value["reranked"]["R@1"]
    if "robustness" in evals:
        for level, recall in zip(evals["robustness"]["levels"], evals["robustness"]["R@1"], strict=True):
            figures[f"robustness/{level:g}"] = recall
    selection = results.get("selection") or {}
    if selection.get("best_step") is not None:
        figures["chosen step"] = selection["best_step"]
    return figures


def summarise(values: list[float], digits: int = 3) -> str:
    """"mean ± std" (the sample standard deviation over the seeds)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _header(name: str) -> str:
    """"(cosine)" -> "cosine"; other names as they are."""
    return name[1:-1] if name.startswith("(") and name.endswith(")") else name


def table(runs: dict[str, list[dict]], columns: list[str], with_time: bool = False, prefix: str = "") -> str:
    """A markdown table: one row per method (the frozen inputs first where they have the
    figures), one column per figure (its name without `prefix`), mean ± std over the
    seeds. A method run on other modalities than the first method's says which."""
    header = (["method"] + [_header(c.removeprefix(prefix)) for c in columns]
              + (["train s"] if with_time else []))
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    reference = next(iter(runs.values()))[0]["config"]["modalities"]
    frozen = next((run["figures"] for method_runs in runs.values() for run in method_runs
                   if any(name.startswith("frozen/") for name in run["figures"])), None)
    if frozen and any(f"frozen/{c}" in frozen for c in columns):
        cells = [summarise([frozen[f"frozen/{c}"]]) if f"frozen/{c}" in frozen else "" for c in columns]
        lines.append("| frozen inputs | " + " | ".join(cells) + (" | |" if with_time else " |"))
    for method, method_runs in runs.items():
        modalities = method_runs[0]["config"]["modalities"]
        label = method if modalities == reference else f"{method} ({', '.join(modalities)})"
        cells = []
        for column in columns:
            values = [run["figures"][column] for run in method_runs if column in run["figures"]]
            cells.append(summarise(values, 0 if column == "chosen step" else 3) if values else "")
        if with_time:
            cells.append(f"{np.mean([run['train_seconds'] for run in method_runs]):.0f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tables(runs: dict[str, list[dict]], measures) -> list[tuple[str, str]]:
    """(title, markdown table) for each group of figures: pairwise retrieval, the anchor
    against the set of the others and back by each measure, and the anchor against
    growing subsets of the others."""
    names = {name for method_runs in runs.values() for run in method_runs for name in run["figures"]}
    groups = [("Pairwise retrieval by config.eval.similarity (cosine unless a row's name says otherwise), and the "
               "step model selection chose", ["pairwise R@1", "chosen step"], True),
              ("How close each instance's own views are: the mean over the test instances of the cosine "
               "between two of its modalities, averaged over the pairs and for the lowest pair",
               [c for c in ("own views' cosine (mean)", "own views' cosine (lowest pair)") if c in names], False)]
    for direction in ("anchor->rest", "rest->anchor"):
        columns = [f"{direction} R@1 ({m})" for m in measures] + [f"{direction} R@1 (re-ranked)"]
        groups.append((f"Set queries {direction}: R@1 by measure", [c for c in columns if c in names], False))
    counts = sorted({int(name.split(" ")[0].split("->")[1]) for name in names
                     if name.startswith("anchor->") and name.split(" ")[0].split("->")[1].isdigit()})
    if counts:
        columns = [f"anchor->{j} R@1 ({m})" for m in ("cosine", "normalized_volume")
                   for j in [*counts, "rest"]]
        groups.append(("The anchor against its first j other modalities (missing modalities at test time)",
                       [c for c in columns if c in names], False))
    return [(title, table(runs, columns, with_time)) for title, columns, with_time in groups if columns]


def robustness_curves(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """{method label: the mean robustness curve over its seeds}."""
    curves = {}
    reference = next(iter(runs.values()))[0]["config"]["modalities"]
    for method, method_runs in runs.items():
        modalities = method_runs[0]["config"]["modalities"]
        label = method if modalities == reference else f"{method} ({', '.join(modalities)})"
        levels = sorted({float(name.split("/")[1]) for run in method_runs for name in run["figures"]
                         if name.startswith("robustness/")})
        if levels:
            curves[label] = {"levels": levels, "R@1": [
                float(np.mean([run["figures"][f"robustness/{level:g}"] for run in method_runs])) for level in levels]}
    return curves


def command(study) -> str:
    """The command that regenerates the study's report."""
    return (f"python -m pmrl_jax.study --config=configs/study.py"
            f"{'' if study.report == 'results' else ':' + study.report}"
            f"{' --config.features_directory=DIR' if study.features_directory else ''}")


def summary(study, everything: dict) -> str:
    """The README's results section: per dataset, pairwise retrieval and the anchor
    against the set of the others."""
    parts = [f"Test split, mean ± standard deviation over {len(study.seeds)} seeds, from `{command(study)}` "
             f"(every table and the robustness plots: [`docs/results.md`](docs/results.md)). Every method trains "
             f"its config's step budget and is evaluated at the step with the best mean validation R@1."]
    for dataset, runs in everything.items():
        first = next(iter(runs.values()))[0]["config"]
        parts += ["", f"**{dataset}** (modalities {', '.join(first['modalities'])}; anchor `{first['anchor']}`):",
                  ""]
        measures = study.set_similarities
        columns = [f"anchor->rest R@1 ({m})" for m in measures] + ["anchor->rest R@1 (re-ranked)"]
        parts += [tables(runs, measures)[0][1], "", "The anchor against the set of the others, R@1 by measure:", "",
                  table(runs, [c for c in columns if any(c in run["figures"] for r in runs.values() for run in r)],
                        prefix="anchor->rest R@1 ")]
    return "\n".join(parts)


def publish(text: str, short: str | None, workdir: str, repository: str, report_name: str = "results") -> None:
    """docs/<report_name>.md (+ its plots) and, given `short`, the README's section
    between the markers."""
    import shutil

    from pmrl_jax.workdir import write_atomically

    docs = os.path.join(repository, "docs")
    for name in os.listdir(workdir):
        if name.endswith(".png"):
            shutil.copy(os.path.join(workdir, name), os.path.join(docs, name))
    write_atomically(os.path.join(docs, f"{report_name}.md"), text)
    if short is None:
        return
    readme_path = os.path.join(repository, "README.md")
    with open(readme_path) as f:
        readme = f.read()
    start, end = "<!-- results -->", "<!-- /results -->"
    if start not in readme or end not in readme:
        raise FileNotFoundError(f"{readme_path} has no {start} ... {end} section to write the results into")
    head, rest = readme.split(start, 1)
    write_atomically(readme_path, f"{head}{start}\n{short}\n{end}{rest.split(end, 1)[1]}")


def report(study, everything: dict, workdir: str) -> str:
    from pmrl_jax import plots
    from pmrl_jax.workdir import write_atomically

    seeds = len(study.seeds)
    parts = [f"# Study: {', '.join(rows(study))} on {', '.join(everything)}",
             "",
             f"Test split; each cell is the mean ± standard deviation over {seeds} seed(s) "
             f"({', '.join(map(str, study.seeds))}); R@1 with ties counted against the model. "
             f"Each run trains its method's config, chooses its step by mean validation R@1, and is "
             f"evaluated at that step. 'pairwise' is the mean over every ordered pair of modalities "
             f"(cosine); 'anchor->rest' queries the anchor against the set of the other modalities "
             f"and 'rest->anchor' the reverse; 'train s' is the wall time of training, compilation "
             f"and validation included. Regenerate: `{command(study)}`."]
    for dataset, runs in everything.items():
        first = next(iter(runs.values()))[0]["config"]
        parts += ["", f"## {dataset}", "",
                  f"modalities {first['modalities']}, anchor `{first['anchor']}`, {first['num_steps']} steps"]
        for title, text in tables(runs, study.set_similarities):
            parts += ["", f"### {title}", "", text]
        curves = robustness_curves(runs)
        if curves:
            name = f"robustness_{dataset}.png"
            plots.robustness_plot(curves, os.path.join(workdir, name))
            parts += ["", f"![robustness]({name})"]
    text = "\n".join(parts) + "\n"
    write_atomically(os.path.join(workdir, "results.md"), text)
    write_atomically(os.path.join(workdir, "results.json"), json.dumps(everything, indent=2))
    return text


def run_study(study, workdir: str, repository: str | None = None) -> str:
    from pmrl_jax.configs import ConfigError

    if not study.report.isidentifier():
        raise ConfigError(f"config.report={study.report!r}: expected a file name such as 'results'")
    everything = {}
    chosen = rows(study)
    for dataset, overrides in datasets(study).items():
        everything[dataset] = {}
        for label, (method, row_overrides) in chosen.items():
            everything[dataset][label] = []
            for seed in study.seeds:
                run_dir = os.path.join(workdir, dataset, label, f"seed_{seed}")
                print(f"study: {dataset} / {label} / seed {seed} -> {run_dir}", flush=True)
                config = run_config(study, method, {**overrides, **row_overrides}, seed)
                everything[dataset][label].append(run_one(config, run_dir))
    text = report(study, everything, workdir)
    if repository:
        main_study = study.report == "results"
        publish(text, summary(study, everything) if main_study else None, workdir, repository, study.report)
    return text


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    from pmrl_jax.configs import ConfigError
    from pmrl_jax.data.features import FeaturesError

    try:
        text = run_study(_CONFIG.value, _WORKDIR.value, _PUBLISH.value)
    except (ConfigError, FeaturesError, FileNotFoundError) as error:
        raise SystemExit(f"pmrl_jax.study: {error}") from None
    print(text)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
