"""A run that would write no checkpoint before it ends is refused up front (nest_ssl/train/checkpoint_schedule.py,
called by the preflight), and a training manifest too small for one batch is named by its file.

The verdict on configs alone (no data) in-process; the epoch length counted from a real manifest by the real
preflight; the CLI's one-line error (exit 2, no run folder) as a subprocess.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nest_ssl.config import ConfigError, load_config
from nest_ssl.train.checkpoint_schedule import epoch_too_short_to_validate, save_at_short_epoch_end, schedule_problem
from nest_ssl.train.preflight import preflight
from nest_ssl.train.trainer_config import parse_run_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("NEST_SSL_DEBUG", None)
for _var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
    ENV.pop(_var, None)
SR = 16000
CKPT = "exp_manager.checkpoint_callback_params"
N_TRAIN, BATCH = 12, 2  # 6 batches per epoch in one process, 3 in each of two


def settings(*overrides):
    """The tiny config (val_check_interval 20 counted per epoch, checkpoints after validation) with overrides."""
    cfg = load_config(config_name="nest_tiny", overrides=["model.train_ds.manifest_filepath=a.json",
                                                          "model.validation_ds.manifest_filepath=b.json", *overrides])
    return parse_run_config(cfg)


class EpochOf:
    """An epoch_batches answer for a known epoch length, recording the caps it was asked with."""

    def __init__(self, batches):
        self.batches, self.caps = batches, []

    def __call__(self, cap):
        self.caps.append(cap)
        return self.batches if self.batches is not None and self.batches < cap else None


@pytest.mark.parametrize("overrides,needles", [
    (["trainer.max_steps=7"], ["trainer.val_check_interval=20", "trainer.max_steps=7", "lower trainer.val_check_interval"]),
    (["trainer.max_steps=7", "trainer.accumulate_grad_batches=2", "trainer.val_check_interval=15"],
     ["trainer.val_check_interval=15", "14 batches with accumulate_grad_batches=2"]),
    (["trainer.max_epochs=1", "trainer.max_steps=-1", "trainer.check_val_every_n_epoch=2"],
     ["trainer.max_epochs=1", "epoch 2", "trainer.check_val_every_n_epoch=2"]),
    (["trainer.max_steps=100", "+trainer.limit_train_batches=5"],
     ["trainer.limit_train_batches=5", "trainer.check_val_every_n_epoch=null"]),
    (["trainer.max_steps=100", "+trainer.limit_val_batches=0"], ["trainer.limit_val_batches=0", "this run has none"]),
    (["trainer.max_steps=100", "model.validation_ds.manifest_filepath=null"], ["model.validation_ds.manifest_filepath"]),
    (["trainer.max_steps=100", f"++{CKPT}.every_n_epochs=0"], [f"{CKPT}.every_n_epochs=0"]),
    (["trainer.max_steps=10", "trainer.val_check_interval=5", f"++{CKPT}.every_n_train_steps=50", f"++{CKPT}.every_n_epochs=0"],
     [f"{CKPT}.every_n_train_steps=50 is more than trainer.max_steps=10"]),
    (["trainer.max_epochs=1", "trainer.max_steps=-1", f"++{CKPT}.save_on_train_epoch_end=true", f"++{CKPT}.every_n_epochs=2"],
     ["save_on_train_epoch_end", "trainer.max_epochs=1"]),
])
def test_configs_that_never_checkpoint_are_named_with_the_fix(overrides, needles):
    s = settings(*overrides)
    # as the preflight says it: a validation set that is given and not limited to 0 batches
    has_validation = s.trainer.limit_val_batches != 0 and "model.validation_ds.manifest_filepath=null" not in overrides
    problem = schedule_problem(s, has_validation=has_validation, epoch_batches=EpochOf(None))
    assert problem is not None and "\n" not in problem
    assert problem.startswith("this run would write no checkpoint before it ends")
    assert f"{CKPT}.every_n_train_steps=N" in problem  # the fix that always works
    for needle in needles:
        assert needle in problem, (needle, problem)


@pytest.mark.parametrize("overrides", [
    ["trainer.max_steps=7", f"++{CKPT}.every_n_train_steps=7"],  # steps, whatever validation does
    ["trainer.max_steps=-1", f"++{CKPT}.every_n_train_steps=1000"],
    ["trainer.max_steps=20"],  # validates at its last step: a short test run is fine
    ["trainer.max_steps=100", "trainer.check_val_every_n_epoch=null"],  # across epochs, within max_steps
    ["trainer.max_steps=-1", "trainer.max_epochs=-1", "trainer.val_check_interval=1.0"],
    ["trainer.max_steps=7", "exp_manager.create_checkpoint_callback=false"],  # no checkpoints asked for
])
def test_configs_that_checkpoint_pass(overrides):
    assert schedule_problem(settings(*overrides), has_validation=True, epoch_batches=EpochOf(None)) is None


def test_the_epoch_length_is_asked_only_when_it_decides_and_only_up_to_what_decides():
    per_epoch = settings("trainer.max_steps=100000", "trainer.val_check_interval=2500")
    short, long_ = EpochOf(360), EpochOf(None)
    problem = schedule_problem(per_epoch, has_validation=True, epoch_batches=short)
    assert short.caps == [2500] and "an epoch of model.train_ds has only 360 batch(es) per process" in problem
    assert "trainer.check_val_every_n_epoch=1" in problem and "trainer.check_val_every_n_epoch=null" in problem
    assert schedule_problem(per_epoch, has_validation=True, epoch_batches=long_) is None and long_.caps == [2500]
    # unknown (Shar input): the run goes ahead, the trainer checks its first epoch
    assert schedule_problem(per_epoch, has_validation=True, epoch_batches=None) is None
    # counted across epochs with a bound on epochs: max_epochs x the epoch must reach val_check_interval
    bounded = settings("trainer.max_steps=-1", "trainer.max_epochs=4", "trainer.check_val_every_n_epoch=null",
                       "trainer.val_check_interval=30")
    counter = EpochOf(7)
    assert "trainer.max_epochs=4 epoch(s) of 7 batch(es)" in schedule_problem(bounded, has_validation=True,
                                                                             epoch_batches=counter)
    assert counter.caps == [8]
    assert schedule_problem(bounded, has_validation=True, epoch_batches=EpochOf(8)) is None
    # decided without the data: never asked
    for s in (settings("trainer.max_steps=7"), settings("trainer.max_steps=50", f"++{CKPT}.every_n_train_steps=10"),
              settings("trainer.max_steps=100", "trainer.check_val_every_n_epoch=null")):
        asked = EpochOf(1)
        schedule_problem(s, has_validation=True, epoch_batches=asked)
        assert asked.caps == []


def test_the_end_of_a_short_epoch_is_judged_as_the_preflight_would():
    per_epoch = settings("trainer.max_steps=-1", "trainer.max_epochs=5")  # val_check_interval 20 per epoch
    assert epoch_too_short_to_validate(per_epoch, 19) and not epoch_too_short_to_validate(per_epoch, 20)
    assert save_at_short_epoch_end(per_epoch, 3) and not save_at_short_epoch_end(per_epoch, 20)
    for other in (settings("trainer.max_steps=-1", "trainer.max_epochs=5", f"++{CKPT}.every_n_train_steps=10"),
                  settings("trainer.max_steps=-1", "trainer.max_epochs=5", "exp_manager.create_checkpoint_callback=false")):
        assert epoch_too_short_to_validate(other, 3) and not save_at_short_epoch_end(other, 3)
    for fine in (settings("trainer.max_steps=-1", "trainer.check_val_every_n_epoch=null"),
                 settings("trainer.max_steps=-1", "trainer.val_check_interval=1.0")):
        assert not epoch_too_short_to_validate(fine, 3) and not save_at_short_epoch_end(fine, 3)


# ----------------------------------------------------------------------------------------------------------------
# With real manifests: the preflight counts the epoch; the CLI refuses


def _wavs(d: Path, names, seconds=1.5):
    rng = np.random.default_rng(0)
    rows = []
    for name in names:
        sf.write(str(d / name), (rng.standard_normal(int(seconds * SR)) * 0.1).astype(np.float32), SR)
        rows.append(json.dumps({"audio_filepath": name, "duration": seconds}) + "\n")
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("schedule")
    rows = _wavs(d, [f"u{i}.wav" for i in range(N_TRAIN)])
    (d / "train.json").write_text("".join(rows))
    (d / "val.json").write_text("".join(rows[:2]))
    (d / "a.json").write_text("".join(rows[:2]))
    (d / "b.json").write_text("".join(rows[2:3]))
    return d


def _overrides(data, exp, *extra):
    return [f"model.train_ds.manifest_filepath={data / 'train.json'}",
            f"model.validation_ds.manifest_filepath={data / 'val.json'}", f"exp_manager.exp_dir={exp}",
            f"model.train_ds.batch_size={BATCH}", "trainer.enable_progress_bar=false", *extra]


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "nest_ssl.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=240)


def _error_line(p):
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr[-3000:])
    errors = [line for line in p.stderr.splitlines() if line.startswith("nest-ssl: error: ")]
    assert len(errors) == 1 and p.stderr.rstrip().splitlines()[-1] == errors[0], p.stderr[-3000:]
    return errors[0]


def test_preflight_counts_the_batches_each_process_gets(data, tmp_path):
    """val_check_interval=5 per epoch: one process gets 6 batches (validates), each of two gets 3 (never)."""
    def check(*extra):
        cfg = load_config(config_name="nest_tiny", overrides=_overrides(data, tmp_path / "exp", "trainer.max_steps=100",
                                                                         "trainer.val_check_interval=5", *extra))
        preflight(cfg, parse_run_config(cfg))

    check("trainer.devices=1", "trainer.accelerator=cpu")
    with pytest.raises(ConfigError, match=r"only 3 batch\(es\) per process"):
        check("trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp")
    check("trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp", f"++{CKPT}.every_n_train_steps=50")
    assert not (tmp_path / "exp").exists()


def test_train_refuses_a_run_that_never_checkpoints(data, tmp_path):
    exp = tmp_path / "exp"
    p = _cli(["train", "--config-name", "nest_tiny", *_overrides(data, exp, "trainer.max_steps=100000")], tmp_path)
    line = _error_line(p)
    for needle in ("this run would write no checkpoint before it ends", "trainer.val_check_interval=20",
                   "trainer.check_val_every_n_epoch=1", "only 6 batch(es) per process",
                   "trainer.check_val_every_n_epoch=null", f"{CKPT}.every_n_train_steps=N"):
        assert needle in line, (needle, line)
    assert not exp.exists() and not (tmp_path / "nemo_experiments").exists()


def test_too_small_manifests_are_named_by_file(data, tmp_path):
    exp = tmp_path / "exp"
    a, b = data / "a.json", data / "b.json"
    big = ["model.train_ds.batch_size=5", "model.train_ds.drop_last=true", "trainer.max_steps=2",
           "trainer.val_check_interval=2"]
    p = _cli(["train", "--config-name", "nest_tiny", *_overrides(data, exp, *big),
              f"model.train_ds.manifest_filepath={a},{b}"], tmp_path)
    line = _error_line(p)
    assert "too small for one batch" in line and f"3 cut(s) in 2 manifests ({a}: 2, {b}: 1)" in line, line
    assert "batch_size=5" in line and "drop_last=true" in line
    assert not exp.exists()
    cfg = load_config(config_name="nest_tiny", overrides=[*_overrides(data, exp, *big),
                                                          f"model.train_ds.manifest_filepath={a}"])
    with pytest.raises(ConfigError) as err:
        preflight(cfg, parse_run_config(cfg))
    assert f"2 cut(s) in {a} within min_duration/max_duration" in str(err.value)


# ----------------------------------------------------------------------------------------------------------------
# Iterable input: the epoch length is found when an epoch ends


@pytest.mark.slow
def test_shar_epochs_too_short_to_validate_save_at_their_end(tmp_path):
    """Shar input (force_finite: one pass per epoch) of 8 cuts in batches of 3: epochs of 3 batches against the tiny
    config's val_check_interval of 20 per epoch. The preflight cannot count them and lets the run start; the
    trainer warns once and writes the last checkpoint at the end of each epoch (steps 3 and 6)."""
    from dummy_data import make_dummy_data
    from nest_ssl.checkpoint import load_checkpoint
    from nest_ssl.data.manifests import open_cutset
    from nest_ssl.prepare.shar import export_shar

    make_dummy_data(tmp_path, num_train=8, num_val=2)
    open_cutset(str(tmp_path / "data/dummy_ssl/train_manifest.json")).to_file(tmp_path / "train_cuts.jsonl.gz")
    export_shar(tmp_path / "train_cuts.jsonl.gz", tmp_path / "shar", shard_size=8, seed=0)
    p = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "train", "--config-name", "nest_tiny",
                        f"model.train_ds.manifest_filepath={tmp_path / 'shar'}", "++model.train_ds.force_finite=true",
                        "model.train_ds.batch_size=3", "model.train_ds.drop_last=false",
                        "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
                        "trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.enable_progress_bar=false",
                        "exp_manager.exp_dir=exp"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    warnings = [line for line in p.stderr.splitlines() if "fewer than trainer.val_check_interval=20" in line]
    assert len(warnings) == 1 and "the last checkpoint is written at the end of every such epoch" in warnings[0]
    ckdir = tmp_path / "exp" / "SSL-NEST-FastConformer-Tiny" / "checkpoints"
    (last,), (prev,) = ckdir.glob("*-last.ckpt"), ckdir.glob("*-last.ckpt.prev")
    first, second = load_checkpoint(prev), load_checkpoint(last)
    assert (first["global_step"], first["nest_ssl"]["loop"]["epoch_finished"]) == (3, True)
    assert second["global_step"] == 6 and first["nest_ssl"]["loop"]["last_val_step"] == -1
