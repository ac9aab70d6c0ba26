"""Config files, command-line overrides and the checks that reject a bad config before
anything is compiled."""

import os
import re
import subprocess
import sys

import pytest

from configs_util import CONFIG_DIR, METHODS, load_config
from pmrl_jax import checks, train
from pmrl_jax.configs import ConfigError, unknown_field
from pmrl_jax.resolve import resolve

REPO = CONFIG_DIR.parent
UCI_SHAPES = {"fac": (216,), "fou": (76,), "kar": (64,), "mor": (6,), "pix": (240,), "zer": (47,)}


def _shapes(config):
    return UCI_SHAPES


def resolved(name, arg="smoke", **fields):
    """The config `name` with `fields` (dotted paths) set, resolved against the embedded data."""
    config = load_config(name, arg)
    for path, value in fields.items():
        section, key = _field(config, path)
        section[key] = value
    return resolve(config, _shapes)[0]


@pytest.mark.parametrize("name", METHODS)
def test_every_config_and_its_smoke_variant_validate(name):
    for arg in (None, "smoke"):
        checks.validate(resolved(name, arg), UCI_SHAPES, num_devices=8)
    assert load_config(name, "smoke").num_steps < load_config(name, None).num_steps


def test_defaults_follow_the_papers():
    gram, pmrl = load_config("gram", None), load_config("pmrl", None)
    assert gram.loss.label_smoothing == 0.1 and gram.model.temperature.initial == 0.07
    assert gram.model.matching.enabled and gram.model.matching.weight == 0.1
    assert (pmrl.loss.pmrl.alignment_temperature, pmrl.loss.pmrl.regularization_temperature) == (0.05, 0.1)
    assert pmrl.model.matching.weight == 0.1


def test_the_data_decides_what_the_config_leaves_open():
    clip = resolved("clip", None)
    assert clip.data.modalities == ("pix", "fac", "kar", "fou", "zer", "mor") and clip.loss.anchor == "pix"
    assert clip.eval.retrieval.set_queries == ("pix->fac", "pix->fac+kar", "pix->fac+kar+fou", "pix->fac+kar+fou+zer",
                                     "pix->fac+kar+fou+zer+mor", "fac+kar+fou+zer+mor->pix")
    assert (clip.data.gaussian_noise, clip.data.gaussian_noise_exclude) == (0.5, ("mor",))
    assert (clip.model.encoder.kind, clip.model.embed_dim, clip.model.standardize) == ("mlp", 128, False)
    # TRIANGLE takes three: the anchor and the next two; a named anchor comes first.
    assert resolved("triangle", None).data.modalities == ("pix", "fac", "kar")
    assert resolved("triangle", None, **{"loss.anchor": "zer"}).data.modalities == ("zer", "pix", "fac")
    # Named modalities are kept as given (a shell's "a,b" is split), the anchor among them.
    named = resolved("gram", None, **{"data.modalities": ("kar,fou",), "loss.anchor": "fou"})
    assert named.data.modalities == ("kar", "fou") and named.eval.retrieval.set_queries == ()
    # Resolving a resolved config changes nothing.
    assert resolve(clip, _shapes)[0].to_dict() == clip.to_dict()


@pytest.mark.parametrize("fields,message", [
    ({"loss.anchor": "audio"}, "config.loss.anchor='audio' is not a modality of dataset 'uci_multiple_features'"),
    ({"data.modalities": ("pix", "fac"), "loss.anchor": "kar"},
     "config.loss.anchor='kar' is not one of config.data.modalities ['pix', 'fac']"),
    ({"data.options.directory": "/data"}, "config.data.options sets ['directory'], which dataset "
                                          "'uci_multiple_features' does not take; its options: views, seed"),
    ({"data.options.views": ("pix", "ink")}, "config.data.options.views names ['ink']"),
    ({"data.gaussian_noise_exclude": ("morph",)}, "config.data.gaussian_noise_exclude names ['morph']"),
])
def test_what_the_data_cannot_decide_is_named(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolved("clip", None, **fields)


def test_unknown_config_argument_is_an_error():
    with pytest.raises(ValueError, match="unknown config argument 'smok'"):
        load_config("gram", "smok")


def _field(config, path):
    """(the section holding the dotted `path`, its last key)."""
    section, _, key = path.rpartition(".")
    for part in filter(None, section.split(".")):
        config = config[part]
    return config, key


@pytest.mark.parametrize("field,value,message", [
    ("loss.name", "volume", "config.loss.name='volume' is not a known loss"),
    ("warm_start.loss", "nope", "config.warm_start.loss='nope'"),
    ("loss.similarity", "dot", "config.loss.similarity='dot'"),
    ("model.temperature.initial", 0.0, "config.model.temperature"),
    ("loss.pmrl.alignment_temperature", -1.0, "config.loss.pmrl.alignment_temperature must be > 0"),
    ("data.batch_size", 30, "config.data.batch_size=30"),
    ("eval.retrieval.set_similarities", ("cosine", "cos"), "config.eval.retrieval.set_similarities names ['cos']"),
    ("eval.robustness.noise_levels", (0.0, -1.0), "config.eval.robustness.noise_levels=(0.0, -1.0)"),
    ("eval.rerank.top_k", 0, "config.eval.rerank.top_k=0"),
    ("eval.select_query", "pix->pix", "config.eval.select_query 'pix->pix'"),
    ("eval.select_similarity", "dot", "config.eval.select_similarity='dot'"),
    ("loss.gram.volume_logits", "log", "config.loss.gram.volume_logits='log'"),
    ("model.dtype", "float16", "config.model.dtype='float16'"),
    ("nonfinite", "ignore", "config.nonfinite='ignore'"),
])
def test_bad_fields_are_named(field, value, message):
    config = resolved("gram", **{field: value})
    with pytest.raises(ConfigError, match=re.escape(message)):
        checks.validate(config, UCI_SHAPES, num_devices=8)


def test_an_evaluator_section_is_checked_even_when_the_evaluator_is_not_listed():
    config = resolved("gram", **{"eval.classification.descriptions": "prompts.npy",
                                 "eval.classification.description_modality": "audio"})
    config.evals = ("retrieval",)
    with pytest.raises(ConfigError, match=re.escape("config.eval.classification.description_modality='audio' is "
                                                    "not one of")):
        checks.validate(config, UCI_SHAPES, num_devices=8)


@pytest.mark.parametrize("path", sorted(checks.FIELD_BOUNDS))
def test_numeric_fields_out_of_range_are_named(path):
    lowest, excluded = checks.FIELD_BOUNDS[path]
    section, key = _field(resolved("gram"), path)
    kind = type(section[key])  # ConfigDict keeps a field's type
    outside = [kind(lowest - 1) if kind is int else lowest - 0.5] + ([kind(excluded)] if excluded is not None else [])
    if kind is float:
        outside.append(float("nan"))
    for value in outside:
        config = resolved("gram")
        section, key = _field(config, path)
        section[key] = value
        with pytest.raises(ConfigError, match=re.escape(f"config.{path} must be ")):
            checks.validate(config, UCI_SHAPES, num_devices=8)
    config = resolved("gram")
    section, key = _field(config, path)
    section[key] = kind(lowest)  # the lowest value allowed passes (one device: a batch of 1 divides)
    checks.validate(config, UCI_SHAPES, num_devices=1)


def test_learning_rate_must_be_positive():
    for value in (0.0, -1e-3, float("nan")):
        config = resolved("clip", **{"optimizer.learning_rate": value})
        with pytest.raises(ConfigError, match=re.escape("config.optimizer.learning_rate must be > 0")):
            checks.validate(config, UCI_SHAPES, num_devices=8)


def test_a_rejected_config_writes_nothing(tmp_path):
    config = load_config("clip")
    config.data.batch_size = 0
    with pytest.raises(ConfigError, match="config.data.batch_size must be >= 1; got 0"):
        train.train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_modalities_must_exist_in_the_data_and_match_the_loss():
    with pytest.raises(ConfigError, match=r"names \['audio'\], which dataset 'uci_multiple_features' does not have"):
        resolved("clip", **{"data.modalities": ("fac", "audio")})
    config = resolved("triangle", **{"data.modalities": ("pix", "fac")})
    with pytest.raises(ConfigError, match="'triangle' needs k = 3 modalities; config.data.modalities has 2"):
        checks.validate(config, UCI_SHAPES, num_devices=8)
    config = resolved("gram", **{"data.modalities": ("pix",)})
    with pytest.raises(ConfigError, match="'gram' needs k = >= 2"):
        checks.validate(config, UCI_SHAPES, num_devices=8)


def _main(*args, timeout=300):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run([sys.executable, "-m", "pmrl_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_command_line_rejects_an_unknown_field(tmp_path):
    result = _main("--config=configs/gram.py:smoke", "--config.optimizer.learning_rat=1e-3", f"--workdir={tmp_path}")
    assert result.returncode == 1
    assert ("pmrl_jax: --config.optimizer.learning_rat=1e-3: config.optimizer has no field 'learning_rat'; "
            "did you mean 'learning_rate'? its fields: b1, b2, decay,") in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.listdir(tmp_path)  # rejected before anything was written


def test_unknown_field_names_the_missing_part_and_what_is_there():
    config = load_config("gram")
    assert unknown_field(config, "optimizer.learning_rate") is None
    assert unknown_field(config, "model.temperature.initial") is None
    assert unknown_field(config, "model.temperatur.initial") == (
        "config.model has no field 'temperatur'; did you mean 'temperature'? its fields: "
        + ", ".join(sorted(config.model.keys())))
    assert unknown_field(config, "num_steps.max") == "config.num_steps holds a value (6), not a section with fields"


def test_command_line_names_a_missing_section(tmp_path):
    result = _main("--config=configs/clip.py:smoke", "--config.train.steps=3", f"--workdir={tmp_path}")
    assert result.returncode == 1
    assert "pmrl_jax: --config.train.steps=3: config has no field 'train'; its fields: checkpoint_every," in result.stderr
    assert "Traceback" not in result.stderr


def test_command_line_reports_a_bad_value_in_one_line(tmp_path):
    result = _main("--config=configs/clip.py:smoke", "--config.data.batch_size=0", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "pmrl_jax: config.data.batch_size must be >= 1; got 0"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments,message", [
    (["--config.data.name=mnist"], "pmrl_jax: unknown dataset 'mnist'; known: uci_multiple_features"),
    (["--config.mesh.fsdp=3"], "pmrl_jax: config.mesh.fsdp=3 must be >= 1 and divide the 2 devices"),
    (["--config.data.name=features", "--config.data.options.directory=/nonexistent"],
     "pmrl_jax: split 'train': missing directory /nonexistent/train"),
    (["--config.data.name=features"], "pmrl_jax: dataset 'features' needs config.data.options.directory"),
    (["--mode=eval"], "pmrl_jax: workdir"),
])
def test_command_line_reports_bad_data_and_mesh_settings_in_one_line(tmp_path, arguments, message):
    result = _main("--config=configs/clip.py:smoke", *arguments, f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("notes")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        train.train(load_config("clip"), str(tmp_path / "run"))
    assert (tmp_path / "run").read_text() == "notes"


def test_stop_at_must_be_a_step(tmp_path):
    result = _main("--config=configs/clip.py:smoke", "--stop_at=0", f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert "flag --stop_at=0: 0 is not a positive integer" in result.stderr
    assert not (tmp_path / "run").exists()


def test_command_line_override_reaches_the_run(tmp_path):
    result = _main("--config=configs/clip.py:smoke", "--config.num_steps=4", "--config.log_every=1",
                   f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 steps" in result.stdout and "R@1" in result.stdout
    with open(tmp_path / "metrics.jsonl") as f:
        assert [int(line.split(",")[0].split(":")[1]) for line in f if "validation/" not in line] == [1, 2, 3, 4]


def test_eval_mode_without_checkpoints_is_a_clear_error(tmp_path):
    result = _main("--config=configs/clip.py:smoke", "--mode=eval", f"--workdir={tmp_path / 'empty'}")
    assert result.returncode != 0
    assert "has no checkpoints" in result.stderr


