"""User mistakes through the real command line: `nest-ssl train|export|import-nemo` and recipes/nest/train.py as
subprocesses, on tiny generated manifests. Each mistake must end in exit code 2 and one line
`nest-ssl: error: ...` naming the key or file, with no traceback and no run folder left behind; most are caught
before a model is built (nest_ssl/train/preflight.py)."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from nest_ssl.checkpoint import atomic_write, save_checkpoint
from nest_ssl.cli.guard import user_message
from nest_ssl.config import ConfigError, load_config
from nest_ssl.train.trainer_config import parse_run_config

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("NEST_SSL_DEBUG", None)
SR = 16000
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """train.json / val.json (NeMo manifests over four 1.5 s wav files), an empty manifest, a text file."""
    d = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):
        name = f"u{i}.wav"
        sf.write(str(d / name), (rng.standard_normal(int(1.5 * SR)) * 0.1).astype(np.float32), SR)
        rows.append(json.dumps({"audio_filepath": name, "duration": 1.5}) + "\n")
    (d / "train.json").write_text("".join(rows))
    (d / "val.json").write_text("".join(rows[:2]))
    (d / "empty.json").write_text("")
    (d / "notes.txt").write_text("not a checkpoint\n")
    (d / "bad_line3.json").write_text(rows[0] + rows[1] + "{oops\n" + rows[2])
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A real checkpoint of the tiny model (weights and config, as import-nemo writes them)."""
    from nest_ssl.models import NESTModel

    d = tmp_path_factory.mktemp("ckpt")
    cfg = load_config(config_name="nest_tiny")
    model = NESTModel.from_config(cfg.model)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=False)
    return save_checkpoint({"state_dict": model.state_dict(), "nest_ssl": {"config": {"model": model_cfg}}},
                           d / "tiny.ckpt")


def _run(args, cwd, env=ENV, prefix=(), head=None):
    head = head or [sys.executable, "-m", "nest_ssl.cli"]
    return subprocess.run([*prefix, *head, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=240)


def _train_args(data: Path, exp: Path, *overrides):
    return ["train", "--config-name", "nest_tiny", f"model.train_ds.manifest_filepath={data / 'train.json'}",
            f"model.validation_ds.manifest_filepath={data / 'val.json'}", f"exp_manager.exp_dir={exp}",
            "trainer.max_steps=1", "trainer.enable_progress_bar=false", *overrides]


def assert_user_error(p, *needles, code=2):
    """Exit 2, no traceback, and exactly one `nest-ssl: error:` line (the last one) holding every needle."""
    assert p.returncode == code, (p.returncode, p.stderr[-3000:])
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("nest-ssl: error: ")]
    assert len(errors) == 1, p.stderr[-3000:]
    assert p.stderr.rstrip().splitlines()[-1] == errors[0]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def _unprivileged():
    """A command prefix that takes file-permission overrides away from root (else root reads a mode-000 file)."""
    if not IS_ROOT:
        return ()
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")


# ----------------------------------------------------------------------------------------------------------------
# nest-ssl train: one subprocess per class of mistake


TRAIN_MISTAKES = {
    "missing manifest": (["model.train_ds.manifest_filepath={d}/nope.json"],
                         ["model.train_ds.manifest_filepath", "nope.json", "not found"]),
    "empty manifest": (["model.validation_ds.manifest_filepath={d}/empty.json"],
                       ["model.validation_ds.manifest_filepath", "empty.json", "empty"]),
    "folder as manifest": (["model.train_ds.manifest_filepath={d}"],
                           ["model.train_ds.manifest_filepath", "is a directory"]),
    "missing noise manifest": (["model.train_ds.noise_manifest={d}/noise.json"],
                               ["model.train_ds.noise_manifest", "noise.json", "not found"]),
    "batch size of the wrong type": (["model.train_ds.batch_size=8x"],
                                     ["model.train_ds.batch_size='8x'", "must be an integer"]),
    "batch size out of range": (["model.train_ds.batch_size=0"], ["model.train_ds.batch_size=0", ">= 1"]),
    "durations the wrong way round": (["model.train_ds.min_duration=5", "model.train_ds.max_duration=2"],
                                      ["model.train_ds.min_duration=5", "max_duration=2"]),
    "no layers": (["model.encoder.n_layers=0"], ["model.encoder.n_layers=0", ">= 1"]),
    "learning rate": (["model.optim.lr=-1"], ["model.optim.lr=-1", "> 0"]),
    "bucket bins": (["++model.train_ds.use_bucketing=true", "++model.train_ds.bucket_duration_bins=[4.0,2.0]"],
                    ["model.train_ds.bucket_duration_bins", "strictly increasing"]),
    "widths that disagree": (["model.decoder.feat_in=64"], ["model.decoder.feat_in=64", "96"]),
    "text file as init checkpoint": (["+init_from_ptl_ckpt={d}/notes.txt"],
                                     ["init_from_ptl_ckpt", "notes.txt", "not a PyTorch checkpoint"]),
    "manifest as init .nemo": (["+init_from_nemo_model={d}/train.json"],
                               ["init_from_nemo_model", "train.json", "not a .nemo archive"]),
    "folder as resume checkpoint": (["+exp_manager.resume_from_checkpoint={d}"],
                                    ["exp_manager.resume_from_checkpoint", "is a directory"]),
    "typo in a key": (["trainer.max_step=3"], ["trainer.max_step", "did you mean"]),
    # the trainer-side sections (nest_ssl/train/trainer_config.py)
    "trainer value of the wrong type": (["trainer.max_steps=ten"], ["trainer.max_steps='ten'", "must be an integer"]),
    "trainer value out of range": (["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps=0", ">= 1"]),
    "typo in an exp_manager key": (["+exp_manager.resume_if_exist=true"],
                                   ["exp_manager.resume_if_exist", "did you mean 'exp_manager.resume_if_exists'"]),
    "checkpoint value of the wrong type": (["exp_manager.checkpoint_callback_params.save_top_k=best"],
                                           ["exp_manager.checkpoint_callback_params.save_top_k='best'", "integer"]),
    "health threshold out of range": (["+nest_trainer.health.min_coverage=2"],
                                      ["nest_trainer.health.min_coverage=2", "at most 1"]),
    # model values that only the model's constructors (or the first step) would have refused
    "learning rate below min_lr": (["model.optim.lr=1e-9"], ["model.optim.lr=1e-09", "model.optim.sched.min_lr"]),
    "even conv kernel": (["model.encoder.conv_kernel_size=4"], ["model.encoder", "conv_kernel_size must be odd"]),
    "heads that do not divide d_model": (["model.encoder.n_heads=5"], ["model.encoder.d_model=96", "n_heads=5"]),
    "mask probability out of range": (["model.masking.mask_prob=1.5"], ["model.masking.mask_prob=1.5", "<= 1"]),
    "unknown optimizer": (["model.optim.name=adamx"], ["model.optim", "adamx", "choose one of"]),
    "two warmup keys": (["model.optim.sched.warmup_ratio=0.1"], ["model.optim.sched", "warmup_ratio, not both"]),
    # the data as a whole
    "corpus too small for one batch": (["model.train_ds.batch_size=500", "model.train_ds.drop_last=true"],
                                       ["model.train_ds", "too small for one batch", "train.json", "batch_size=500",
                                        "drop_last=true"]),
}


@pytest.mark.parametrize("mistake", list(TRAIN_MISTAKES))
def test_train_mistake_is_one_line_exit_2_and_leaves_no_folder(mistake, data, tmp_path):
    overrides, needles = TRAIN_MISTAKES[mistake]
    exp = tmp_path / "exp"
    p = _run(_train_args(data, exp, *[o.format(d=data) for o in overrides]), cwd=tmp_path)
    assert_user_error(p, *needles)
    assert not exp.exists() and not (tmp_path / "nemo_experiments").exists()


def test_second_run_on_the_same_run_folder_is_refused(data, tmp_path):
    """Two real `nest-ssl train` processes on one run folder (resume_if_exists: the same command twice)."""
    import signal
    import time

    from nest_ssl.train.run_lock import LOCK_NAME, RunFolderLock

    exp = tmp_path / "exp"
    run = exp / "SSL-NEST-FastConformer-Tiny"  # no version folder with resume_if_exists
    args = _train_args(data, exp, "trainer.max_steps=100000", "trainer.val_check_interval=100000",
                       "trainer.check_val_every_n_epoch=null")
    first = subprocess.Popen([sys.executable, "-m", "nest_ssl.cli", *map(str, args)], cwd=tmp_path, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240  # a bound on a hang, not a timing assertion
        while not ((run / LOCK_NAME).exists() and (run / LOCK_NAME).read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        second = _run(args, cwd=tmp_path)
        assert_user_error(second, f"run folder {run}", f"PID {first.pid}", "in use")
        assert first.poll() is None  # the refused run neither stopped the first ...
        assert (run / "hparams.yaml").exists()  # ... nor removed its folder
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel dropped the killed run's lock: no stale lock to remove by hand.
    RunFolderLock(run).acquire().release()


def test_exp_dir_that_is_a_file(data, tmp_path):
    p = _run(_train_args(data, data / "notes.txt"), cwd=tmp_path)
    assert_user_error(p, "exp_manager.exp_dir", "notes.txt", "is a file, not a directory")


def test_unreadable_manifest_says_permission_denied(data, tmp_path):
    secret = tmp_path / "secret.json"
    shutil.copy(data / "train.json", secret)
    secret.chmod(0)
    exp = tmp_path / "exp"
    p = _run(_train_args(data, exp, f"model.train_ds.manifest_filepath={secret}"), cwd=tmp_path,
             prefix=_unprivileged())
    line = assert_user_error(p, "model.train_ds.manifest_filepath", "secret.json", "permission denied")
    assert "truncated" not in line and "corrupt" not in line
    assert not exp.exists()


def test_exp_dir_without_write_permission(data, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    p = _run(_train_args(data, locked / "exp"), cwd=tmp_path, prefix=_unprivileged())
    assert_user_error(p, "exp_manager.exp_dir", "permission denied")
    assert list(locked.iterdir()) == []


def test_error_found_while_building_removes_the_run_folder(data, tmp_path):
    # Line 3 is only read when the sampler estimates bucket bins, after the model is built and the folder made.
    exp = tmp_path / "exp"
    p = _run(_train_args(data, exp, f"model.train_ds.manifest_filepath={data / 'bad_line3.json'}",
                         "++model.train_ds.use_bucketing=true", "++model.train_ds.num_buckets=2"), cwd=tmp_path)
    assert_user_error(p, "bad_line3.json:3", "not valid JSON")
    assert not exp.exists()


def test_debug_shows_the_traceback(data, tmp_path):
    args = _train_args(data, tmp_path / "exp", "model.optim.lr=0")
    p = _run(["--debug", *args], cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" in p.stderr and "ConfigError" in p.stderr
    assert p.stderr.rstrip().splitlines()[-1].startswith("nest-ssl: error: model.optim.lr=0")
    p = _run(args, cwd=tmp_path, env={**ENV, "NEST_SSL_DEBUG": "1"})
    assert p.returncode == 2 and "Traceback" in p.stderr


def test_recipe_entry_point_reports_the_same_way(data, tmp_path):
    head = [sys.executable, str(REPO / "recipes" / "nest" / "train.py")]
    args = _train_args(data, tmp_path / "exp", f"model.train_ds.manifest_filepath={data}/nope.json")[1:]
    p = _run(args, cwd=tmp_path, head=head)
    assert_user_error(p, "nope.json", "not found")
    assert not (tmp_path / "exp").exists()


def test_version_and_cfg_job_with_options_between_overrides(tmp_path):
    from nest_ssl import __version__

    p = _run(["--version"], cwd=tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == f"nest-ssl {__version__}"
    # Hydra: options and overrides in any order; --cfg job prints the resolved config and trains nothing
    p = _run(["train", "model.encoder.n_layers=3", "--config-name", "nest_tiny", "trainer.max_steps=7",
              "--cfg", "job", "model.optim.sched.d_model=123"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    cfg = OmegaConf.create(p.stdout)
    assert cfg.model.encoder.n_layers == 3 and cfg.trainer.max_steps == 7 and cfg.model.optim.sched.d_model == 123
    assert cfg.model.encoder.d_model == 96  # nest_tiny's
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# export / import-nemo


@pytest.mark.slow  # several export subprocesses (tens of seconds on 2 cores): `make test-slow`
def test_export_mistakes(ckpt, data, tmp_path):
    out = tmp_path / "out.nemo"
    assert_user_error(_run(["export", tmp_path / "none.ckpt", out], tmp_path), "none.ckpt", "does not exist")
    assert_user_error(_run(["export", data, out], tmp_path), "is a directory, not a file")
    assert_user_error(_run(["export", data / "notes.txt", out], tmp_path), "notes.txt", "not a PyTorch checkpoint")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[:4000])
    assert_user_error(_run(["export", truncated, out], tmp_path), "truncated.ckpt", "damaged or truncated")
    foreign = tmp_path / "asr.ckpt"
    torch.save({"state_dict": {"joint.weight": torch.zeros(2)}}, foreign)
    assert_user_error(_run(["export", foreign, out], tmp_path), "asr.ckpt", "not a NEST model", "joint")
    assert_user_error(_run(["export", ckpt, tmp_path], tmp_path), "OUT=", "is a directory")
    assert not out.exists()
    # and the good case still works
    p = _run(["export", ckpt, out], tmp_path)
    assert p.returncode == 0 and out.is_file(), p.stderr[-2000:]
    assert_user_error(_run(["import-nemo", ckpt, tmp_path / "x.ckpt"], tmp_path), "tiny.ckpt", "not a .nemo archive")
    assert_user_error(_run(["import-nemo", out, "/dev/null"], tmp_path), "/dev/null", "not a regular file")
    assert not (tmp_path / "x.ckpt").exists()


def test_unreadable_checkpoint_is_not_called_corrupt(ckpt, tmp_path):
    secret = tmp_path / "secret.ckpt"
    shutil.copy(ckpt, secret)
    secret.chmod(0)
    p = _run(["export", secret, tmp_path / "out.nemo"], tmp_path, prefix=_unprivileged())
    line = assert_user_error(p, "secret.ckpt", "permission denied")
    assert "corrupt" not in line and "damaged" not in line


def test_full_disk_is_named(ckpt, tmp_path):
    """A real ENOSPC: a 64 KiB tmpfs in a private mount namespace (needs root and unshare)."""
    if not IS_ROOT or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a small file system")
    small = tmp_path / "small"
    small.mkdir()
    cmd = (f"mount -t tmpfs -o size=64k tmpfs {small} || exit 99; "
           f"exec {sys.executable} -m nest_ssl.cli export {ckpt} {small}/out.nemo")
    p = subprocess.run(["unshare", "-m", "sh", "-c", cmd], env=ENV, capture_output=True, text=True, timeout=240)
    if p.returncode == 99:
        pytest.skip("cannot mount a tmpfs here")
    assert_user_error(p, "out.nemo", "no space left on the device")


# ----------------------------------------------------------------------------------------------------------------
# In-process: the wording of OS errors, and the new settings


def test_os_errors_are_worded_by_what_happened(tmp_path):
    def to_full_disk(tmp):
        with open("/dev/full", "wb") as f:  # the kernel's own ENOSPC
            f.write(b"x" * 65536)
            f.flush()

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "a.ckpt", to_full_disk)
    assert info.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())
    assert user_message(info.value).startswith(f"{tmp_path / 'a.ckpt'}: no space left on the device")
    assert "is a directory" in user_message(IsADirectoryError(errno.EISDIR, "Is a directory", "x"))
    assert user_message(ValueError("a bug")) is None  # not a user error: keeps its traceback


def test_max_time_and_num_threads_settings():
    base = {"model": {}, "trainer": {"enable_checkpointing": False, "logger": False}}
    s = parse_run_config(OmegaConf.create({**base, "trainer": {**base["trainer"], "max_time": "00:01:30:00"}}))
    assert s.exp_manager.max_time_per_run == 5400.0 and s.nest_trainer.num_threads is None
    s = parse_run_config(OmegaConf.create({**base, "trainer": {**base["trainer"], "max_time": {"minutes": 2}},
                                           "exp_manager": {"max_time_per_run": "00:00:01:00"},
                                           "nest_trainer": {"num_threads": 3}}))
    assert s.exp_manager.max_time_per_run == 60.0 and s.nest_trainer.num_threads == 3  # the earlier limit wins
    with pytest.raises(ConfigError, match="nest_trainer.num_threads"):
        parse_run_config(OmegaConf.create({**base, "nest_trainer": {"num_threads": "all"}}))
    with pytest.raises(ConfigError, match="trainer.max_time.*positive"):
        parse_run_config(OmegaConf.create({**base, "trainer": {**base["trainer"], "max_time": "00:00:00:00"}}))


# ----------------------------------------------------------------------------------------------------------------
# local/*.py, the recipes' helpers (standard library only)


def test_recipe_helpers_report_user_errors_in_one_line(tmp_path):
    split = [sys.executable, str(REPO / "local" / "split_by_speaker.py")]
    p = _run([tmp_path / "none.jsonl.gz", tmp_path / "t.gz", tmp_path / "v.gz"], tmp_path, head=split)
    assert_user_error(p, "none.jsonl.gz", "does not exist")
    bad = tmp_path / "cuts.jsonl"
    bad.write_text(json.dumps({"id": "a", "duration": 1.0}) + "\n{broken\n")
    p = _run([bad, tmp_path / "t.gz", tmp_path / "v.gz"], tmp_path, head=split)
    assert_user_error(p, "cuts.jsonl:2", "not a JSON line")
    p = _run(["last-checkpoint", tmp_path], tmp_path, head=[sys.executable, str(REPO / "local" / "summary.py")])
    assert_user_error(p, "no *last.ckpt", "run the training stage first")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cuts.jsonl"]
