"""StepStats: the trainer's per-step sums by name, in one tensor with the health sums (one all-reduce per step)."""

import os
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nest_ssl.train.step_stats import FIELD_NAMES, StepStats


def out(loss, masked=3, tokens=10, empty=False):
    return SimpleNamespace(loss=torch.tensor(loss), num_masked_tokens=masked, num_tokens=tokens, empty_mask=empty)


def test_named_sums_and_health_share_one_tensor():
    s = StepStats(health_width=4)
    assert s.tensor.shape == (len(FIELD_NAMES) + 4,) and s.tensor.dtype == torch.float64
    s.add_micro_batch(out(2.0), audio_seconds=1.5)
    s.add_micro_batch(out(float("nan"), masked=0, empty=True), audio_seconds=0.5)  # counted, not added
    s.add_micro_batch(out(4.0, masked=5), audio_seconds=torch.tensor(2.0))  # device counts as the model gives them
    s.health.add_(torch.arange(4, dtype=torch.float64))  # as HealthLayout.add does: writes into the view
    s.stop_request = 1.0
    assert s.as_dict() == {"loss_sum": 6.0, "micro_batches": 3.0, "nonfinite": 1.0, "empty_mask": 1.0,
                           "masked_tokens": 8.0, "tokens": 30.0, "audio_seconds": 4.0, "computed_seconds": 0.0,
                           "stop_request": 1.0, "preempt_request": 0.0, "nonfinite_grad": 0.0, "grad_norm": 0.0}
    assert s.mean_loss() == 3.0 and s.masked_fraction() == 8 / 30
    assert s.tensor[len(FIELD_NAMES):].tolist() == [0.0, 1.0, 2.0, 3.0]
    same = StepStats.from_tensor(s.tensor.clone())
    assert same.as_dict() == s.as_dict() and torch.equal(same.health, s.health)
    host = s.host()  # a copy: zeroing the step's sums for the next step leaves it as it was
    s.zero()
    assert host.as_dict()["loss_sum"] == 6.0 and host.mean_loss() == 3.0 and host.tensor.device.type == "cpu"
    assert not s.tensor.any() and s.mean_loss() != s.mean_loss()  # nan: no finite micro-batch


def _rank(rank, port, results):
    from nest_ssl.train.distributed import DistInfo

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        info = DistInfo(rank=rank, local_rank=rank, world_size=2, device=torch.device("cpu"))
        s = StepStats(health_width=2)
        s.add_micro_batch(out(1.0 + rank, tokens=10 * (rank + 1)), audio_seconds=1.0)
        s.health.add_(float(rank + 1))
        s.stop_request = 1.0 if rank == 1 else 0.0  # one rank asks to stop: all of them see it
        s.all_reduce(info)
        results[rank] = (s.as_dict(), s.health.tolist())
    finally:
        dist.destroy_process_group()


def test_one_all_reduce_sums_every_field_over_two_gloo_ranks():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.start_processes(_rank, args=(port, results), nprocs=2, start_method="spawn")
    assert results[0] == results[1]
    sums, health = results[0]
    assert sums["loss_sum"] == 3.0 and sums["micro_batches"] == 2.0 and sums["tokens"] == 30.0
    assert sums["stop_request"] == 1.0 and health == [3.0, 3.0]
