"""Config files, command-line overrides and the checks that reject a bad config before
anything is compiled."""

import os
import subprocess
import sys

import pytest

from configs_util import CONFIG_DIR, METHODS, load_config
from pmrl_jax import train

REPO = CONFIG_DIR.parent
UCI_SHAPES = {"fac": (216,), "fou": (76,), "kar": (64,), "mor": (6,), "pix": (240,), "zer": (47,)}


@pytest.mark.parametrize("name", METHODS)
def test_every_config_and_its_smoke_variant_validate(name):
    for arg in (None, "smoke"):
        config = load_config(name, arg)
        train.validate(config, UCI_SHAPES, num_devices=8)
    assert load_config(name, "smoke").num_steps < load_config(name, None).num_steps


def test_defaults_follow_math_md():
    gram, pmrl = load_config("gram", None), load_config("pmrl", None)
    assert gram.loss.label_smoothing == 0.1 and gram.model.temperature.initial == 0.07
    assert gram.model.matching.enabled and gram.model.matching.weight == 0.1
    assert (pmrl.loss.alignment_temperature, pmrl.loss.regularization_temperature) == (0.05, 0.1)
    assert pmrl.model.matching.weight == 0.1
    assert load_config("clip", None).data.modalities == ("fac", "fou", "kar", "mor", "pix", "zer")


def test_unknown_config_argument_is_an_error():
    with pytest.raises(ValueError, match="unknown config argument 'smok'"):
        load_config("gram", "smok")


@pytest.mark.parametrize("field,value,message", [
    ("loss.name", "volume", "config.loss.name='volume' is not a known loss"),
    ("warm_start.loss", "nope", "config.warm_start.loss='nope'"),
    ("loss.similarity", "dot", "config.loss.similarity='dot'"),
    ("model.temperature.initial", 0.0, "config.model.temperature"),
    ("loss.alignment_temperature", -1.0, "config.loss.alignment_temperature must be > 0"),
    ("data.batch_size", 30, "config.data.batch_size=30"),
    ("loss.anchor", 3, "config.loss.anchor=3"),
    ("model.dtype", "float16", "config.model.dtype='float16'"),
    ("nonfinite", "ignore", "config.nonfinite='ignore'"),
])
def test_bad_fields_are_named(field, value, message):
    config = load_config("gram")
    section, _, key = field.rpartition(".")
    target = config
    for part in filter(None, section.split(".")):
        target = target[part]
    target[key] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train.validate(config, UCI_SHAPES, num_devices=8)


def test_modalities_must_exist_in_the_data_and_match_the_loss():
    config = load_config("clip")
    config.data.modalities = ["fac", "audio"]
    with pytest.raises(ValueError, match=r"names \['audio'\], which dataset 'uci_multiple_features' does not have"):
        train.validate(config, UCI_SHAPES, num_devices=8)
    config = load_config("triangle")
    config.data.modalities = ["pix", "fac"]
    with pytest.raises(ValueError, match="'triangle' needs k = 3 modalities; config.data.modalities has 2"):
        train.validate(config, UCI_SHAPES, num_devices=8)
    config = load_config("gram")
    config.data.modalities = ["pix"]
    config.loss.anchor = 0
    with pytest.raises(ValueError, match="'gram' needs k = >= 2"):
        train.validate(config, UCI_SHAPES, num_devices=8)


def _main(*args, timeout=300):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run([sys.executable, "-m", "pmrl_jax.main", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_command_line_rejects_an_unknown_field(tmp_path):
    result = _main("--config=configs/gram.py:smoke", "--config.optimizer.learning_rat=1e-3", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert "learning_rat" in result.stderr
    assert not os.listdir(tmp_path)  # rejected before anything was written


def test_command_line_override_reaches_the_run(tmp_path):
    result = _main("--config=configs/clip.py:smoke", "--config.num_steps=4", "--config.log_every=1",
                   f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 steps" in result.stdout and "R@1" in result.stdout
    with open(tmp_path / "metrics.jsonl") as f:
        assert [int(line.split(",")[0].split(":")[1]) for line in f] == [1, 2, 3, 4]


def test_eval_mode_without_checkpoints_is_a_clear_error(tmp_path):
    result = _main("--config=configs/clip.py:smoke", "--mode=eval", f"--workdir={tmp_path / 'empty'}")
    assert result.returncode != 0
    assert "has no checkpoints" in result.stderr


def test_noise_exclusions_must_name_real_modalities():
    config = load_config("clip")
    config.data.gaussian_noise_exclude = ("morph",)
    with pytest.raises(ValueError, match=r"config.data.gaussian_noise_exclude names \['morph'\]"):
        train.validate(config, UCI_SHAPES, num_devices=8)
