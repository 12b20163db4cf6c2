"""DataLoadingConfig: the train_ds / validation_ds sections typed by OmegaConf, checked in one place."""

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nest_ssl.config import ConfigError, load_config
from nest_ssl.data.config import DataLoadingConfig, parse_data_config

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "recipes" / "nest" / "conf"


def test_every_key_of_the_nest_yaml_is_a_field():
    keys = {f.name for f in dataclasses.fields(DataLoadingConfig)}
    for path in sorted(CONF.glob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        for section in ("train_ds", "validation_ds"):
            missing = set(model.get(section) or {}) - keys
            assert not missing, (path.name, section, missing)


def test_nemo_sections_parse_with_the_defaults_in_one_place():
    cfg = load_config(config_name="nest_fast-conformer",
                      overrides=["model.train_ds.manifest_filepath=a.json", "model.validation_ds.manifest_filepath=b.json"])
    train = parse_data_config(cfg.model.train_ds, "model.train_ds")
    assert (train.batch_size, train.min_duration, train.max_duration, train.drop_last) == (8, 1.0, 60.0, True)
    assert train.sample_rate == 16000  # ${model.sample_rate}, resolved
    assert train.batch_augmentor["prob"] == 0.5 and isinstance(train.batch_augmentor, dict)
    assert (train.use_bucketing, train.num_buckets, train.shard_seed, train.concurrent_bucketing) == (
        False, 30, "randomized", False)
    val = parse_data_config(cfg.model.validation_ds, "model.validation_ds")
    assert val.manifest_filepath == "b.json" and val.shuffle is False
    assert parse_data_config(train) is train  # already typed: checked, not copied
    assert train.buffer_size("bucket_buffer_size", iterable=True) == 2000
    assert train.buffer_size("shuffle_buffer_size", iterable=False) == 10000


@pytest.mark.parametrize("node, needles", [
    ({"batch_size": "8x"}, ["model.train_ds.batch_size='8x'", "must be an integer >= 1"]),
    ({"batch_size": 2.5}, ["model.train_ds.batch_size=2.5", "must be an integer"]),
    ({"batch_size": 0}, ["model.train_ds.batch_size=0", ">= 1"]),
    ({"batch_duration": -3}, ["model.train_ds.batch_duration=-3", "> 0"]),
    ({"batch_size": 4, "max_duration": "long"}, ["model.train_ds.max_duration='long'", "must be a number"]),
    ({"batch_size": 4, "min_duration": 5, "max_duration": 2}, ["min_duration=5 is larger", "max_duration=2"]),
    ({"batch_size": 4, "bucket_duration_bins": [4.0, 2.0]}, ["bucket_duration_bins", "strictly increasing"]),
    ({"batch_size": 4, "bucket_duration_bins": [1.0, -2.0]}, ["bucket_duration_bins", "positive"]),
    ({"batch_size": 4, "bucket_duration_bins": [[1.0, 10], [2.0, 20]]}, ["2D bins"]),
    ({"batch_size": 4, "use_bucketing": True, "num_buckets": 1}, ["num_buckets=1", "at least 2"]),
    ({"batch_size": 4, "use_bucketing": "maybe"}, ["use_bucketing='maybe'", "true or false"]),
    ({"batch_size": 4, "shard_seed": "sometimes"}, ["shard_seed='sometimes'", "'randomized' or 'trng'"]),
    ({"batch_size": 4, "seed": "trng"}, ["seed='trng'", "must be an integer", "shard_seed"]),
    ({"batch_size": 4, "batch_sise": 4}, ["model.train_ds.batch_sise: unknown key", "did you mean model.train_ds.batch_size"]),
    ({"batch_size": 4, "is_tarred": True}, ["is_tarred=true", "nest-ssl shar export"]),
    ({}, ["set model.train_ds.batch_size", "batch_duration"]),
])
def test_wrong_values_are_one_clear_message(node, needles):
    with pytest.raises(ConfigError) as err:
        parse_data_config(node, "model.train_ds")
    msg = str(err.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_keys_without_effect_are_warned_about_not_dropped(caplog):
    cfg = parse_data_config({"batch_size": 2, "is_concat": True, "bucketing_batch_size": [4, 2], "shuffle_n": 2048})
    with caplog.at_level(logging.WARNING, logger="nest_ssl.data.config"):
        cfg.warn_ignored("train_ds")
    text = [r.getMessage() for r in caplog.records]
    assert len(text) == 2, text  # shuffle_n has its default: nothing to say
    assert any("train_ds.is_concat=True is ignored" in t for t in text)
    assert any("train_ds.bucketing_batch_size=[4, 2] is ignored" in t for t in text)


def test_train_command_names_a_misspelt_data_key_before_anything_is_built(tmp_path):
    exp = tmp_path / "exp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NEST_SSL_DEBUG", None)
    p = subprocess.run(
        [sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
         "model.train_ds.manifest_filepath=a.json", "model.validation_ds.manifest_filepath=b.json",
         f"exp_manager.exp_dir={exp}", "+model.train_ds.shufle=true"],
        capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("nest-ssl: error: ")]
    assert errors == ["nest-ssl: error: model.train_ds.shufle: unknown key; did you mean model.train_ds.shuffle?"]
    assert not exp.exists()
