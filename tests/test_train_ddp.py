"""Two CPU processes over gloo: disjoint data, identical weights after every step, resume; SyncBatchNorm on CPU.

The trainer writes a per-rank trace (sample ids of every batch, a digest of all weights and buffers after every
optimizer step) when NEST_SSL_TRACE_DIR is set; these tests read it.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nest_ssl.train.loggers import read_metrics, series
from dummy_data import make_dummy_data

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "recipes" / "nest" / "train.py"
RUN_NAME = "SSL-NEST-FastConformer-Tiny"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    make_dummy_data(d, num_train=32, num_val=8)
    return d


COMMON = [
    "--config-name", "nest_tiny",
    "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
    "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
    "trainer.devices=2", "trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.sync_batchnorm=true",
    "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "+trainer.deterministic=true",
    "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
    "++exp_manager.checkpoint_callback_params.every_n_train_steps=2",
]


def launch(workdir, exp, trace, max_steps, torchrun=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NEST_SSL_TRACE_DIR": str(workdir / trace)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}", str(TRAIN)]
    else:
        head = [sys.executable, str(TRAIN)]  # trainer.devices=2 without torchrun: the trainer starts the processes
    p = subprocess.run(head + COMMON + [f"trainer.max_steps={max_steps}", f"exp_manager.exp_dir={exp}"], cwd=workdir,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return p


def read_trace(d):
    out = {}
    for rank in (0, 1):
        rows = [json.loads(line) for line in (d / f"rank{rank}.jsonl").read_text().splitlines()]
        out[rank] = {
            "batches": {r["batch"]: r["sample_ids"] for r in rows if "sample_ids" in r},
            "weights": {r["step"]: r["weights"] for r in rows if "weights" in r},
        }
    return out


def test_two_processes_step_together_and_resume(workdir):
    launch(workdir, "full", "trace_full", max_steps=6)
    tr = read_trace(workdir / "trace_full")
    # Both ranks took the same steps and hold bit-identical weights and buffers (SyncBatchNorm) after each one.
    assert sorted(tr[0]["weights"]) == sorted(tr[1]["weights"]) == [1, 2, 3, 4, 5, 6]
    assert tr[0]["weights"] == tr[1]["weights"]
    assert len(set(tr[0]["weights"].values())) == 6  # and the weights did change every step
    # Disjoint data: no utterance is seen by both ranks at a step, nor twice within the epoch (32 cuts, 2 x 4 x 4).
    for b in range(6):
        assert not set(tr[0]["batches"][b]) & set(tr[1]["batches"][b])
    seen = [c for r in (0, 1) for b in range(4) for c in tr[r]["batches"][b]]
    assert len(seen) == len(set(seen)) == 32
    # Only rank 0 writes logs, metrics and checkpoints.
    run_dir = workdir / "full" / RUN_NAME
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert sorted(series(read_metrics(run_dir), "train_loss")) == [1, 2, 3, 4, 5, 6]

    # The same run in two parts: torchrun this time, stopped at step 3 (its last checkpoint is from step 3),
    # then continued to step 6 with the same world size: the same data, weights and losses.
    launch(workdir, "parts", "trace_parts", max_steps=3, torchrun=True)
    p = launch(workdir, "parts", "trace_parts", max_steps=6, torchrun=True)
    assert "resumed from" in p.stderr and "global step 3" in p.stderr
    tp = read_trace(workdir / "trace_parts")
    for rank in (0, 1):
        assert tp[rank]["weights"] == tr[rank]["weights"]
        assert tp[rank]["batches"] == tr[rank]["batches"]
    full = series(read_metrics(run_dir), "train_loss")
    parts = series(read_metrics(workdir / "parts" / RUN_NAME), "train_loss")
    assert parts == full


def _sync_bn_worker(rank, port, x, results):
    from nest_ssl.train.distributed import CPUSyncBatchNorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = CPUSyncBatchNorm(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    part = x[rank * 2:(rank + 1) * 2].clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    dist.all_reduce(bn.weight.grad)
    results[rank] = (y.detach(), part.grad, bn.weight.grad, bn.running_mean.clone(), bn.running_var.clone())
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_equals_batchnorm_over_all_ranks():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5) * 2 + 1
    ref = torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        ref.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    xr = x.clone().requires_grad_(True)
    y = ref(xr)
    # the same weighting of the outputs as the two workers use on their halves
    w = torch.cat([torch.arange(2 * 3 * 5).reshape(2, 3, 5)] * 2).float()
    (y * w).sum().backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(_sync_bn_worker, args=(port, x, results), nprocs=2, start_method="spawn")
    ys = torch.cat([results[0][0], results[1][0]])
    grads = torch.cat([results[0][1], results[1][1]])
    torch.testing.assert_close(ys, y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads, xr.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[0][2], ref.weight.grad, rtol=1e-4, atol=1e-4)
    for r in (0, 1):
        torch.testing.assert_close(results[r][3], ref.running_mean)
        torch.testing.assert_close(results[r][4], ref.running_var)
