"""The join: a finite iterable pass (Shar, force_finite) gives ranks different numbers of batches; under DDP every
rank ends the epoch at the same step as soon as one runs out, without a hang and without a lost gradient step.

Two gloo processes train the tiny model on Shar shards of unequal size (two ranks read disjoint shards, so one rank
has more batches than the other) for two epochs; the per-rank trace (NEST_SSL_TRACE_DIR) shows what each trained.
"""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nest_ssl.data.manifests import open_cutset
from nest_ssl.prepare.shar import export_shar
from nest_ssl.train.loggers import read_metrics, series
from dummy_data import make_dummy_data

REPO = Path(__file__).resolve().parent.parent
RUN_NAME = "SSL-NEST-FastConformer-Tiny"
BATCH = 3


@pytest.fixture(scope="module")
def shar_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("join")
    make_dummy_data(d, num_train=20, num_val=4)
    cuts = open_cutset(str(d / "data/dummy_ssl/train_manifest.json"))
    cuts.to_file(d / "train_cuts.jsonl.gz")
    export_shar(d / "train_cuts.jsonl.gz", d / "shar", shard_size=8, seed=0)  # shards of 8, 8 and 4 cuts
    return d


def shard_contents(shar: Path) -> list[set[str]]:
    out = []
    for path in sorted(shar.glob("cuts.*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            out.append({json.loads(line)["id"] for line in f})
    return out


def train(d: Path, trace: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEST_SSL_TRACE_DIR": str(d / trace)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, str(REPO / "recipes/nest/train.py"), "--config-name", "nest_tiny",
           f"model.train_ds.manifest_filepath={d / 'shar'}", "++model.train_ds.force_finite=true",
           f"model.train_ds.batch_size={BATCH}", "model.train_ds.drop_last=false",
           "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.sync_batchnorm=true",
           "trainer.max_steps=-1",
           "trainer.max_epochs=2", "trainer.val_check_interval=1.0", "trainer.log_every_n_steps=1",
           "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
           f"exp_manager.exp_dir={trace}-exp", *extra]
    # A hang (a rank waiting in a collective the other never reaches) shows up as this timeout.
    p = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def read_trace(d: Path) -> dict:
    out = {}
    for rank in (0, 1):
        rows = [json.loads(line) for line in (d / f"rank{rank}.jsonl").read_text().splitlines()]
        out[rank] = {
            "batches": [r for r in rows if "sample_ids" in r],
            "weights": {r["step"]: r["weights"] for r in rows if "weights" in r},
        }
    return out


# Two micro-batches per step: the agreed last batch also ends a partial accumulation, which both ranks step.
@pytest.mark.parametrize("accumulate", [2])
def test_uneven_finite_pass_ends_together(shar_dir, accumulate):
    trace = f"trace_acc{accumulate}"
    train(shar_dir, trace, f"trainer.accumulate_grad_batches={accumulate}")
    tr = read_trace(shar_dir / trace)
    shards = shard_contents(shar_dir / "shar")
    assert sorted(len(s) for s in shards) == [4, 8, 8]

    # Same steps on both ranks, identical weights after every one of them.
    assert tr[0]["weights"] == tr[1]["weights"] and tr[0]["weights"]
    steps = sorted(tr[0]["weights"])
    assert steps == list(range(1, len(steps) + 1))

    trained_steps = 0
    for epoch in (0, 1):
        per_rank = {r: [b for b in tr[r]["batches"] if b["epoch"] == epoch] for r in (0, 1)}
        n = len(per_rank[0])
        # Every rank trained the same number of micro-batches in the epoch ...
        assert n == len(per_rank[1]) > 0, epoch
        seen = {r: {c for b in per_rank[r] for c in b["sample_ids"]} for r in (0, 1)}
        assert not seen[0] & seen[1]
        # ... and the epoch ended when the rank with the smaller share ran out: that rank trained its whole
        # share (whole shards), the other only part of its larger one.
        whole = [r for r in (0, 1) if any(seen[r] == s or seen[r] == s | t for s in shards for t in shards if t != s)]
        assert whole, (epoch, {r: len(seen[r]) for r in (0, 1)})
        assert len(seen[0]) != len(seen[1]) or len(seen[0]) + len(seen[1]) == 20
        # The last (partial) accumulation is stepped by both ranks: no micro-batch's gradient is dropped.
        trained_steps += -(-n // accumulate)
    assert trained_steps == len(steps)

    run_dir = shar_dir / f"{trace}-exp" / RUN_NAME
    rows = read_metrics(run_dir)
    assert sorted(series(rows, "train_loss")) == steps
    assert len(series(rows, "val_loss")) == 2  # validation after each epoch, on both ranks (a collective)
