"""End-to-end training runs (real subprocesses, the tiny config on CPU): the README command, exact resume after
SIGKILL, a corrupt newest checkpoint, non-finite losses, epochs/accumulation/validation cadence, and plotting."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.train.loggers import read_metrics, series

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "recipes" / "nest" / "train.py"
MAKE_DATA = REPO / "recipes" / "nest" / "make_dummy_data.py"
RUN_NAME = "SSL-NEST-FastConformer-Tiny"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A recipe-like folder with the documented dummy data: 24 train (6 batches of 4 per epoch), 8 val."""
    d = tmp_path_factory.mktemp("recipe")
    subprocess.run([sys.executable, str(MAKE_DATA), "--num-train", "24", "--num-val", "8", "--min-seconds", "1.5",
                    "--max-seconds", "3"], cwd=d, check=True, env=ENV, capture_output=True)
    assert (d / "data/dummy_ssl/train_manifest.json").exists() and (d / "data/dummy_ssl/val_manifest.json").exists()
    return d


DATA = ["model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
        "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json"]
QUIET = ["trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false"]


def train_cmd(*overrides, cli=False):
    head = [sys.executable, "-m", "nest_ssl.cli", "train"] if cli else [sys.executable, str(TRAIN)]
    return head + ["--config-name", "nest_tiny", *DATA, *overrides]


def run(cmd, cwd, timeout=240):
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    return p


def test_readme_example_and_outputs(workdir):
    # The README's command (plus the tiny config, so that it takes seconds on a CPU).
    cmd = train_cmd("trainer.devices=1", "trainer.max_steps=10", "trainer.val_check_interval=5", "trainer.strategy=auto")
    p = run(cmd, workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = workdir / "nemo_experiments" / RUN_NAME  # resume_if_exists: no version folder
    ckpts = sorted(x.name for x in (run_dir / "checkpoints").iterdir())
    rows = read_metrics(run_dir)
    val = series(rows, "val_loss")
    best_step = min(val, key=val.get)
    # save_top_k: 1 with NeMo's filename pattern: only the best validation's checkpoint remains
    topk = [c for c in ckpts if c.endswith(".ckpt") and not c.endswith("-last.ckpt")]
    assert topk == [f"{RUN_NAME}--val_loss={val[best_step]:.3f}-step={best_step}.ckpt"]
    assert any(c.endswith("-step=10-last.ckpt") for c in ckpts)
    assert f"{RUN_NAME}.nemo" in ckpts  # always_save_nemo / save_nemo_on_train_end
    assert (run_dir / "hparams.yaml").exists() and (run_dir / "cmd-args.log").exists()
    assert (run_dir / "nemo_log_globalrank-0_localrank-0.txt").exists()

    assert sorted(series(rows, "train_loss")) == [5, 10]  # log_every_n_steps: 5
    # val_check_interval=5 counts batches of the current epoch (Lightning, check_val_every_n_epoch=1): an epoch
    # has 6 batches, so validation runs at step 5 (epoch 0, batch 5) but not at step 10 (epoch 1, batch 4).
    assert sorted(series(rows, "val_loss")) == [5]
    last = [r for r in rows if "train_loss" in r][-1]
    for key in ("learning_rate", "grad_norm", "throughput", "masked_fraction", "target_perplexity", "epoch"):
        assert key in last, key
    assert 0 < last["masked_fraction"] < 1 and last["target_perplexity"] > 1 and last["throughput"] > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train_loss", "val_loss", "learning_rate", "grad_norm", "throughput", "masked_fraction",
            "target_perplexity"} <= tags
    assert [e.step for e in ea.Scalars("val_loss")] == [5]

    ck = load_checkpoint(run_dir / "checkpoints" / [c for c in ckpts if c.endswith("-last.ckpt")][0])
    assert ck["global_step"] == 10 and "optimizer_states" in ck and "lr_schedulers" in ck
    assert all(not k.startswith("model.") for k in ck["state_dict"])  # NeMo's key names, no wrapper prefix
    assert "encoder.layers.0.self_attn.linear_pos.weight" in ck["state_dict"]
    assert ck["nest_ssl"]["config"]["trainer"]["max_steps"] == 10 and ck["nest_ssl"]["rng"]["torch"].numel() > 0

    # The same command again: the run is complete, nothing is trained or overwritten.
    before = {x.name: x.stat().st_mtime_ns for x in (run_dir / "checkpoints").iterdir()}
    p = run(cmd, workdir)
    assert p.returncode == 0 and "nothing to do" in p.stderr
    assert {x.name: x.stat().st_mtime_ns for x in (run_dir / "checkpoints").iterdir()} == before

    # nest-ssl plot
    from nest_ssl.cli import main

    assert main(["plot", str(workdir / "nemo_experiments"), "-o", str(workdir / "curves.png")]) == 0
    png = workdir / "curves.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def kill_at_checkpoint(cmd, workdir, ckdir, pattern, timeout=180):
    """Starts `cmd`, SIGKILLs it as soon as a checkpoint matching `pattern` exists in `ckdir` (a real kill, at a
    moment the run does not choose)."""
    proc = subprocess.Popen(cmd, cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout
        while not list(ckdir.glob(pattern)):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _losses(run_dir):
    rows = read_metrics(run_dir)
    return series(rows, "train_loss"), series(rows, "val_loss")


@pytest.mark.slow  # a kill-and-resume run (tens of seconds on 2 cores): `make test-slow`
def test_sigkill_and_rerun_gives_the_same_losses(workdir):
    common = ["trainer.max_steps=14", "trainer.val_check_interval=5", "trainer.log_every_n_steps=1",
              "+trainer.deterministic=true", "++exp_manager.checkpoint_callback_params.every_n_train_steps=3", *QUIET]
    ref = run(train_cmd(*common, "exp_manager.exp_dir=ref", cli=True), workdir)
    assert ref.returncode == 0, ref.stderr[-3000:]

    cmd = train_cmd(*common, "exp_manager.exp_dir=killed", cli=True)
    ckdir = workdir / "killed" / RUN_NAME / "checkpoints"
    kill_at_checkpoint(cmd, workdir, ckdir, "*step=6-last.ckpt")
    # Damage the newest checkpoint too: it is reported, and the one before it is used.
    # (A kill between the two renames of a save leaves only the `.prev`; then that one is damaged.)
    lasts = list(ckdir.glob("*-last.ckpt")) or list(ckdir.glob("*-last.ckpt.prev"))
    newest = max(lasts, key=lambda p: p.stat().st_mtime_ns)
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    again = run(cmd, workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "does not match its digest" in again.stderr and "resuming from the newest intact checkpoint" in again.stderr
    assert "resumed from" in again.stderr

    ref_train, ref_val = _losses(workdir / "ref" / RUN_NAME)
    got_train, got_val = _losses(workdir / "killed" / RUN_NAME)
    assert sorted(ref_train) == list(range(1, 15))
    assert got_train == ref_train  # every step, bit for bit (the rerun's values overwrite the killed run's)
    assert got_val == ref_val and sorted(ref_val) == [5, 11]  # epoch 0 batch 5, epoch 1 batch 5
    a = load_checkpoint(next((workdir / "ref" / RUN_NAME / "checkpoints").glob("*-last.ckpt")))
    b = load_checkpoint(next(ckdir.glob("*-last.ckpt")))
    assert a["global_step"] == b["global_step"] == 14 and a["epoch"] == b["epoch"]
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_nonfinite_losses_stop_with_last_good_checkpoint(workdir):
    p = run(train_cmd("trainer.max_steps=30", "trainer.val_check_interval=100", "trainer.log_every_n_steps=1",
                      "model.optim.lr=1e30", "++exp_manager.checkpoint_callback_params.every_n_train_steps=1",
                      "+nest_trainer.max_consecutive_nonfinite=2", "exp_manager.exp_dir=nan", *QUIET), workdir)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "2 optimizer steps in a row had a non-finite loss" in p.stderr
    assert "nest_trainer.max_consecutive_nonfinite" in p.stderr
    run_dir = workdir / "nan" / RUN_NAME
    rows = read_metrics(run_dir)
    skipped = series(rows, "skipped_steps")
    assert max(skipped.values()) == 2  # counted and logged
    lasts = list((run_dir / "checkpoints").glob("*-last.ckpt"))
    assert len(lasts) == 1
    ck = load_checkpoint(lasts[0])  # intact: digest verified
    assert all(torch.isfinite(v).all() for v in ck["state_dict"].values() if v.is_floating_point())
    assert ck["global_step"] == max(series(rows, "train_loss"))  # the last step that trained


def test_epochs_accumulation_and_epoch_end_validation(workdir):
    p = run(train_cmd("trainer.max_steps=-1", "trainer.max_epochs=2", "trainer.val_check_interval=1.0",
                      "trainer.accumulate_grad_batches=2", "+trainer.limit_train_batches=4",
                      "+trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "trainer.gradient_clip_val=0.5",
                      "exp_manager.exp_dir=epochs", "exp_manager.checkpoint_callback_params.save_top_k=-1", *QUIET),
            workdir)
    assert p.returncode == 0, p.stderr[-3000:]
    run_dir = workdir / "epochs" / RUN_NAME
    train, val = _losses(run_dir)
    assert sorted(train) == [1, 2, 3, 4]  # 4 batches per epoch, 2 per optimizer step, 2 epochs
    assert sorted(val) == [2, 4]  # after the last batch of each epoch
    names = sorted(x.name for x in (run_dir / "checkpoints").glob("*.ckpt"))
    assert any("step=2.ckpt" in n for n in names) and any("step=4.ckpt" in n for n in names)  # save_top_k: -1
    ck = load_checkpoint(next((run_dir / "checkpoints").glob("*-last.ckpt")))
    assert ck["epoch"] == 1 and ck["nest_ssl"]["loop"]["epoch_finished"]
    rows = read_metrics(run_dir)
    assert all(r["grad_norm"] > 0 for r in rows if "grad_norm" in r)


def test_config_errors_exit_cleanly(workdir, capsys, monkeypatch):
    from nest_ssl.cli import main

    monkeypatch.chdir(workdir)
    assert main(["train", "--config-name", "nest_tiny", *DATA, "trainer.max_step=3"]) == 2
    assert "did you mean 'trainer.max_steps'" in capsys.readouterr().err
    assert main(["train", "--config-name", "nest_tiny", "trainer.max_steps=3"]) == 2
    assert "model.train_ds.manifest_filepath" in capsys.readouterr().err
    assert main(["train", "--config-name", "nest_tiny", *DATA, "+trainer.fast_dev_run=true"]) == 2
    assert "fast_dev_run" in capsys.readouterr().err
