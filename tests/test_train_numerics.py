"""Numerics under DDP (two CPU processes over gloo, SyncBatchNorm on): every rank takes the same decision.

- a non-finite gradient norm on one rank (injected with the NEST_SSL_DEBUG_NONFINITE_GRAD debugging aid) skips the
  step on both ranks, which then hold the same weights;
- a batch whose every cut is unreadable, on one rank only, does not desynchronise SyncBatchNorm's collectives;
- mask_position: post_conv (whose subsampler gets no gradient) trains under DDP.

The per-rank trace (NEST_SSL_TRACE_DIR: sample ids of every batch, a digest of all weights and buffers after every
optimizer step) shows what each rank did; a hang shows up as the subprocess timeout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nest_ssl.train.loggers import read_metrics, series
from nest_ssl.train.tracing import NONFINITE_GRAD_ENV
from dummy_data import make_dummy_data

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "recipes" / "nest" / "train.py"
RUN_NAME = "SSL-NEST-FastConformer-Tiny"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("numerics")
    make_dummy_data(d, num_train=12, num_val=4)
    return d


def launch(workdir: Path, name: str, *overrides: str, env_extra: dict | None = None,
           devices: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEST_SSL_TRACE_DIR": str(workdir / f"trace_{name}"),
           **(env_extra or {})}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, str(TRAIN), "--config-name", "nest_tiny",
           "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
           "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
           f"trainer.devices={devices}", "trainer.accelerator=cpu", "trainer.sync_batchnorm=true",
           f"trainer.strategy={'ddp' if devices > 1 else 'auto'}",
           "trainer.max_steps=3", "trainer.val_check_interval=1000", "trainer.num_sanity_val_steps=0",
           "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
           "model.train_ds.batch_size=2", "++exp_manager.checkpoint_callback_params.every_n_train_steps=3",
           f"exp_manager.exp_dir={name}", *overrides]
    p = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def read_trace(d: Path, ranks: int = 2) -> dict:
    out = {}
    for rank in range(ranks):
        rows = [json.loads(line) for line in (d / f"rank{rank}.jsonl").read_text().splitlines()]
        out[rank] = {"batches": [r for r in rows if "sample_ids" in r],
                     "weights": {r["step"]: r["weights"] for r in rows if "weights" in r}}
    return out


@pytest.mark.slow
def test_nonfinite_gradient_skips_the_step_and_counts_towards_the_limit(workdir):
    # One process: the injected NaN gradient at batch 2 is skipped, counted and logged; the next steps train.
    p = launch(workdir, "grad1", devices=1, env_extra={NONFINITE_GRAD_ENV: "0:2"})
    tr = read_trace(workdir / "trace_grad1", ranks=1)
    assert sorted(tr[0]["weights"]) == [1, 2, 3] and len(tr[0]["batches"]) == 4
    assert "non-finite gradient norm at batch 2 (after global step 1)" in p.stderr
    rows = read_metrics(workdir / "grad1" / RUN_NAME)
    assert series(rows, "skipped_nonfinite_grad")[3] == 1 and series(rows, "skipped_steps")[3] == 1
    # Two in a row (batches 2 and 3) with a limit of 2: the run stops (exit code 3), as for non-finite losses.
    env = {**os.environ, "OMP_NUM_THREADS": "1", NONFINITE_GRAD_ENV: "0:2,3"}
    p = subprocess.run([sys.executable, str(TRAIN), "--config-name", "nest_tiny",
                        "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
                        "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
                        "trainer.max_steps=3", "+nest_trainer.max_consecutive_nonfinite=2",
                        "++exp_manager.checkpoint_callback_params.every_n_train_steps=3",
                        "trainer.enable_progress_bar=false", "exp_manager.exp_dir=grad_limit"],
                       cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 3, p.stderr[-3000:]
    assert "2 optimizer steps in a row had a non-finite loss or gradient norm" in p.stderr


@pytest.mark.slow
def test_nonfinite_gradient_on_one_rank_is_skipped_on_both(workdir):
    # Rank 1's gradient becomes NaN after DDP's all-reduce, at the step that ends with training batch 2: only rank 1
    # sees it, yet both skip that step (the flag rides the step's one all-reduce of statistics).
    p = launch(workdir, "grad", env_extra={NONFINITE_GRAD_ENV: "1:2"})
    tr = read_trace(workdir / "trace_grad")
    assert sorted(tr[0]["weights"]) == sorted(tr[1]["weights"]) == [1, 2, 3]
    assert tr[0]["weights"] == tr[1]["weights"]  # identical weights and buffers after every step
    assert len(tr[0]["batches"]) == len(tr[1]["batches"]) == 4  # 3 steps and one skipped batch
    assert "non-finite gradient norm" in p.stderr
    rows = read_metrics(workdir / "grad" / RUN_NAME)
    assert series(rows, "skipped_nonfinite_grad") and max(series(rows, "skipped_nonfinite_grad").values()) == 1
    assert series(rows, "skipped_steps")[3] == 1  # the skipped step counts among the skipped steps


@pytest.mark.slow
def test_all_rejected_batch_on_one_rank_with_sync_batchnorm(workdir):
    # In manifest order (no shuffling) the sampler deals batches of 2 cuts to rank 0, rank 1, rank 0, ...: the two
    # unreadable files make up rank 1's first batch, while rank 0's first batch is readable.
    src = workdir / "data/dummy_ssl/train_manifest.json"
    lines = src.read_text().splitlines()
    (workdir / "data/dummy_ssl/unreadable.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    bad = [json.dumps({"audio_filepath": name, "duration": 2.0}) for name in ("unreadable.wav", "missing.wav")]
    manifest = workdir / "data/dummy_ssl/rejects_manifest.json"
    manifest.write_text("\n".join(lines[:2] + bad + lines[2:]) + "\n")
    launch(workdir, "rejects", f"model.train_ds.manifest_filepath={manifest}", "model.train_ds.shuffle=false")
    tr = read_trace(workdir / "trace_rejects")
    assert tr[1]["batches"][0]["sample_ids"] == [] and tr[0]["batches"][0]["sample_ids"]  # rank 1: all rejected
    assert sorted(tr[0]["weights"]) == sorted(tr[1]["weights"]) == [1, 2, 3]
    assert tr[0]["weights"] == tr[1]["weights"]
    listed = (workdir / "rejects" / RUN_NAME / "rejected_cuts.rank1.tsv").read_text()
    assert "unreadable.wav" in listed and "missing.wav" in listed


@pytest.mark.slow
def test_post_conv_masking_trains_under_ddp(workdir):
    p = launch(workdir, "post_conv", "model.mask_position=post_conv")
    tr = read_trace(workdir / "trace_post_conv")
    assert sorted(tr[0]["weights"]) == sorted(tr[1]["weights"]) == [1, 2, 3]
    assert tr[0]["weights"] == tr[1]["weights"] and len(set(tr[0]["weights"].values())) == 3
    assert "find_unused_parameters" in p.stderr  # said once, why DDP looks for unused parameters
