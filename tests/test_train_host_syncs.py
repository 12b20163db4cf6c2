"""At most one host synchronisation per optimizer step on map-style data (tests/host_syncs.py counts them).

The harness runs real training (the tiny config on the CPU, map-style manifests) in the test's subprocesses with
counting hooks and reports, per optimizer step, every place where a GPU run would make the host wait for the device.
The first step is left out (it includes building the model, the first fetch, DDP's setup).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dummy_data import make_dummy_data
from host_syncs import SyncCounter, install

HARNESS = Path(__file__).resolve().parent / "host_syncs.py"
COMMON = ["--config-name", "nest_tiny",
          "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
          "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
          "trainer.val_check_interval=1000", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1",
          "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
          "exp_manager.create_checkpoint_callback=false"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("syncs")
    make_dummy_data(d, num_train=8, num_val=4)
    return d


def harness(workdir: Path, name: str, ranks: int, *overrides: str) -> list[list[dict]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    head = [sys.executable, str(HARNESS)]
    if ranks > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        head = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", f"--master-port={port}",
                str(HARNESS)]
        overrides = (f"trainer.devices={ranks}", "trainer.strategy=ddp", "trainer.sync_batchnorm=true", *overrides)
    out = workdir / name
    p = subprocess.run(head + [str(out)] + COMMON + [f"exp_manager.exp_dir={name}-exp", *overrides], cwd=workdir,
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text())["steps"] for r in range(ranks)]


def check(steps: list[dict], expected_steps: int) -> None:
    assert len(steps) == expected_steps
    for i, events in enumerate(steps[1:], start=2):
        syncs = {k: v for k, v in events.items() if not k.startswith("collective")}
        collectives = {k: v for k, v in events.items() if k.startswith("collective")}
        assert sum(syncs.values()) <= 1, (i, syncs)
        assert sum(collectives.values()) <= 1, (i, collectives)
        # the one that remains is the copy of the step's statistics to the host (the harness sees it)
        assert sum(v for k, v in syncs.items() if k.startswith("to_host")) == 1, (i, syncs)


def test_counter_counts_device_reads_and_not_host_copies():
    from nest_ssl.train import step_stats

    counter = SyncCounter()
    uninstall = install(counter)
    try:
        with counter:
            x = torch.randn(4)  # drawn on the device
            assert float(x.sum()) == float(x.sum())
            x[x > 0].sum()  # a boolean index: its size depends on the values
            host = step_stats.to_host(x * 2)
            float(host.sum()), host.tolist(), bool((host + 1).max() > 0)  # host values: free
            n = torch.zeros(3)  # made by the host from constants
            int(n.sum())
            counter.step_done()
    finally:
        uninstall()
    assert step_stats.to_host.__module__ == "nest_ssl.train.step_stats"  # the hooks are gone
    events = counter.steps[-1]
    assert sum(v for k, v in events.items() if k.startswith("read")) == 2
    assert sum(v for k, v in events.items() if k.startswith("boolean index")) == 1
    assert sum(v for k, v in events.items() if k.startswith("to_host")) == 1
    assert sum(events.values()) == 4


def test_one_host_sync_per_optimizer_step(workdir):
    # 8 cuts in batches of 4: 2 batches an epoch, so the 4 steps cross epoch boundaries.
    (steps,) = harness(workdir, "one", 1, "trainer.max_steps=4")
    check(steps, 4)


@pytest.mark.slow
def test_one_host_sync_per_optimizer_step_two_ranks_accumulating(workdir):
    # Two gloo ranks with SyncBatchNorm and two micro-batches of 2 cuts per step (one step an epoch): still one per
    # optimizer step, on each rank.
    for steps in harness(workdir, "two", 2, "trainer.max_steps=3", "trainer.accumulate_grad_batches=2",
                         "model.train_ds.batch_size=2"):
        check(steps, 3)
