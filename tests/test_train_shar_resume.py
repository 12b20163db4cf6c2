"""Exact mid-stream resume on Shar (iterable input): SIGKILL and a rerun give the same losses, step for step, as an
uninterrupted run, with 0 and 2 dataloader workers; resuming a one-pass epoch (force_finite) on another world
size trains no cut twice in the epoch and says what it did.

Real runs of recipes/nest/train.py (tiny config, CPU), real Shar shards written by `export_shar`.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.data.manifests import open_cutset
from nest_ssl.prepare.shar import export_shar
from nest_ssl.train.loggers import read_metrics, series
from dummy_data import make_dummy_data

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "recipes" / "nest" / "train.py"
RUN_NAME = "SSL-NEST-FastConformer-Tiny"


@pytest.fixture(scope="module")
def shar_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("shar_resume")
    make_dummy_data(d, num_train=32, num_val=4)
    open_cutset(str(d / "data/dummy_ssl/train_manifest.json")).to_file(d / "train_cuts.jsonl.gz")
    export_shar(d / "train_cuts.jsonl.gz", d / "shar", shard_size=4, seed=0)  # 8 shards of 4 cuts
    return d


def _env(trace=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if trace:
        env["NEST_SSL_TRACE_DIR"] = str(trace)
    return env


def _cmd(d, *extra):
    return [sys.executable, str(TRAIN), "--config-name", "nest_tiny", f"model.train_ds.manifest_filepath={d / 'shar'}",
            "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json", "model.train_ds.batch_size=3",
            "trainer.log_every_n_steps=1", "trainer.val_check_interval=1000", "trainer.enable_progress_bar=false",
            "+trainer.enable_model_summary=false", "+trainer.deterministic=true", *extra]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])  # 2 workers: make test-slow
def test_shar_sigkill_and_rerun_gives_the_same_losses(shar_dir, workers):
    d = shar_dir
    common = ["trainer.max_steps=9", f"model.train_ds.num_workers={workers}",
              "++exp_manager.checkpoint_callback_params.every_n_train_steps=3"]
    ref = subprocess.run(_cmd(d, *common, f"exp_manager.exp_dir=ref{workers}"), cwd=d, env=_env(), timeout=300,
                         capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-3000:]

    cmd = _cmd(d, *common, f"exp_manager.exp_dir=killed{workers}")
    ckdir = d / f"killed{workers}" / RUN_NAME / "checkpoints"
    proc = subprocess.Popen(cmd, cwd=d, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        # Step 5 of 9: the checkpoint of step 3 is the newest, 5 batches are trained, more are prefetched.
        while not (d / f"killed{workers}" / RUN_NAME / "metrics.jsonl").exists() or \
                max(series(read_metrics(d / f"killed{workers}" / RUN_NAME), "train_loss") or [0]) < 5:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its dataloader workers
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = load_checkpoint(max(ckdir.glob("*-last.ckpt"), key=lambda p: p.stat().st_mtime_ns))
    assert 3 <= saved["global_step"] < 9
    streams = saved["nest_ssl"]["streams"][0]
    assert streams["num_workers"] == max(1, workers) and sum(streams["positions"].values()) == saved["global_step"]

    again = subprocess.run(cmd, cwd=d, env=_env(), timeout=300, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming each of the" in again.stderr and f"global step {saved['global_step']}" in again.stderr
    ref_loss = series(read_metrics(d / f"ref{workers}" / RUN_NAME), "train_loss")
    got_loss = series(read_metrics(d / f"killed{workers}" / RUN_NAME), "train_loss")
    assert sorted(ref_loss) == list(range(1, 10))
    assert got_loss == ref_loss  # every step, bit for bit
    a = load_checkpoint(next((d / f"ref{workers}" / RUN_NAME / "checkpoints").glob("*-last.ckpt")))
    b = load_checkpoint(next(ckdir.glob("*-last.ckpt")))
    assert a["global_step"] == b["global_step"] == 9
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["nest_ssl"]["streams"] == b["nest_ssl"]["streams"]


def _trained(trace: Path) -> list[list[str]]:
    out = []
    for f in sorted(trace.glob("rank*.jsonl")):
        out += [r["sample_ids"] for r in map(json.loads, f.read_text().splitlines())
                if "sample_ids" in r and r["epoch"] == 0]
    return out


@pytest.mark.slow  # a kill-and-resume run (tens of seconds on 2 cores): `make test-slow`
def test_finite_epoch_resumed_on_another_world_size_trains_no_cut_twice(shar_dir):
    d = shar_dir
    common = ["++model.train_ds.force_finite=true", "model.train_ds.batch_size=2", "trainer.max_epochs=1",
              "trainer.accelerator=cpu", "exp_manager.exp_dir=ws", "++exp_manager.checkpoint_callback_params.every_n_train_steps=2"]
    first = subprocess.run(_cmd(d, *common, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=2"),
                           cwd=d, env=_env(d / "ws_trace1"), timeout=300, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(_cmd(d, *common, "trainer.devices=1", "trainer.strategy=auto", "trainer.max_steps=-1"),
                            cwd=d, env=_env(d / "ws_trace2"), timeout=300, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "the checkpoint was written by 2 process(es) x 1 worker(s), this run has 1 process(es) x 1 worker(s)" \
        in second.stderr
    before, after = _trained(d / "ws_trace1"), _trained(d / "ws_trace2")
    assert len(before) == 4 and after  # 2 steps x 2 ranks, then the rest of the epoch on one process
    ids = [c for b in before + after for c in b]
    assert len(ids) == len(set(ids))  # no cut twice in the epoch
    # The resumed part read every shard the first part had not touched, whole.
    shards = {}
    for path in sorted((d / "shar").glob("cuts.*.jsonl.gz")):
        shards[path.name] = {c.id for c in open_cutset(str(path))}
    touched = {n for n, s in shards.items() if s & {c for b in before for c in b}}
    untouched = set().union(*(shards[n] for n in shards if n not in touched))
    # (8 trained cuts touch at most 8 of the 8 shards; how many depends on the shuffle, which mixes the cuts of a
    # window of shards, here a rank's whole share)
    assert 1 <= len(touched) < len(shards) and {c for b in after for c in b} == untouched
