"""Processes and devices: torchrun's environment, starting the processes ourselves, process groups, SyncBatchNorm.

Three ways a run starts:
- under torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT): every process
  joins the group torchrun describes; this is how multi-node runs start (one torchrun per node, or srun with one
  task per device, whose SLURM variables nest_ssl.train.slurm turns into torchrun's before the plan is made);
- `trainer.devices > 1` on one node without a launcher: the first process starts one process per device itself
  (like Lightning's ddp launcher) and waits for them;
- one device: no process group at all.
NCCL is the backend on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from nest_ssl.config import ConfigError
from nest_ssl.train.slurm import from_slurm

log = logging.getLogger(__name__)

LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class LaunchPlan:
    accelerator: str  # cpu | gpu
    devices_per_node: int
    device_ids: list[int] | None  # GPU indices, one per local process; None on CPU
    num_nodes: int
    use_ddp: bool
    under_launcher: bool  # torchrun (or similar) started the processes

    @property
    def world_size(self) -> int:
        return self.devices_per_node * self.num_nodes


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    node_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def is_global_zero(self) -> bool:
        return self.rank == 0

    @property
    def initialized(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


def under_launcher() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def plan_launch(trainer) -> LaunchPlan:
    """Lightning's accelerator/devices/num_nodes/strategy resolution, for this machine and launch."""
    acc = trainer.accelerator
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if acc == "auto":
        acc = "gpu" if n_gpu > 0 else "cpu"
    if acc == "gpu" and n_gpu == 0:
        raise ConfigError("trainer.accelerator=gpu but no CUDA GPU is visible; use trainer.accelerator=cpu (or auto)")
    devices = trainer.devices
    launcher = under_launcher()
    device_ids: list[int] | None = None
    if acc == "gpu":
        if devices == "auto" or devices == -1:
            device_ids = list(range(n_gpu))
        elif isinstance(devices, list):
            device_ids = devices
        else:
            device_ids = list(range(devices))
        bad = [i for i in device_ids if i >= n_gpu]
        if bad:
            raise ConfigError(f"trainer.devices={devices!r} asks for GPU(s) {bad}, but this node has {n_gpu}")
        count = len(device_ids)
    else:
        if isinstance(devices, list):
            raise ConfigError(f"trainer.devices={devices!r}: a device list names GPUs; on CPU give a process count")
        if devices == -1:
            raise ConfigError(
                "trainer.devices=-1 means every GPU, and none is visible; on CPU set trainer.devices=1 "
                "(or N for N processes over gloo)"
            )
        count = 1 if devices == "auto" else int(devices)
    if launcher:
        local_ws = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
        ws = int(os.environ["WORLD_SIZE"])
        slurm = from_slurm()
        if local_ws != count and not (trainer.devices in ("auto", -1) and acc == "gpu"):
            if slurm:
                raise ConfigError(
                    f"srun started {local_ws} task(s) on this node but trainer.devices={trainer.devices!r} asks for "
                    f"{count}; start one task per device (srun --ntasks-per-node={count}) or set "
                    f"trainer.devices={local_ws}"
                )
            raise ConfigError(
                f"torchrun started {local_ws} processes on this node but trainer.devices={trainer.devices!r} asks "
                f"for {count}; make them agree (torchrun --nproc-per-node={count}, or trainer.devices={local_ws})"
            )
        if ws != local_ws * trainer.num_nodes:
            who = "srun's task count (SLURM_STEP_NUM_TASKS)" if slurm else "torchrun's WORLD_SIZE"
            raise ConfigError(
                f"{who} is {ws}, but trainer.num_nodes={trainer.num_nodes} x {local_ws} processes "
                f"per node is {local_ws * trainer.num_nodes}; set trainer.num_nodes to the number of nodes"
                + (" (srun --nodes, the same number of tasks on every node)" if slurm else "")
            )
        count = local_ws
        if acc == "gpu" and len(device_ids) != count:
            device_ids = list(range(count))
    elif trainer.num_nodes > 1:
        raise ConfigError(
            f"trainer.num_nodes={trainer.num_nodes}: start the run with torchrun on every node "
            "(torchrun --nnodes=N --nproc-per-node=G --rdzv-endpoint=HOST:PORT recipes/nest/train.py ...), "
            "or under SLURM with srun, one task per device (srun --nodes=N --ntasks-per-node=G nest-ssl train ...)"
        )
    world = count * trainer.num_nodes
    return LaunchPlan(
        accelerator=acc,
        devices_per_node=count,
        device_ids=device_ids,
        num_nodes=trainer.num_nodes,
        use_ddp=world > 1,
        under_launcher=launcher,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_with_parent(parent_pid: int) -> None:
    """A process we started must not outlive the process that started it (e.g. killed with SIGKILL): an orphan
    would go on training and writing checkpoints next to the rerun."""
    import threading

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="nest-ssl-parent-watch", daemon=True).start()


def _spawned_entry(local_rank: int, nprocs: int, port: int, fn: Callable, args: tuple, parent_pid: int) -> None:
    _exit_with_parent(parent_pid)
    os.environ.update(
        RANK=str(local_rank),
        LOCAL_RANK=str(local_rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        GROUP_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        NEST_SSL_SPAWNED="1",
    )
    fn(*args)


def spawn(fn: Callable, nprocs: int, args: tuple = ()) -> None:
    """Runs fn(*args) in nprocs new processes with torchrun's environment; raises if any of them fails.

    A preemption signal (SIGTERM, SIGUSR1) sent to this process is passed on to the processes, which stop as
    torchrun's would (nest_ssl.train.signals), while this one waits for them."""
    import signal

    import torch.multiprocessing as mp

    from nest_ssl.train.signals import PREEMPTION_SIGNALS

    port = free_port()
    log.info("starting %d processes (no torchrun environment found); rendezvous on 127.0.0.1:%d", nprocs, port)
    context = mp.start_processes(_spawned_entry, args=(nprocs, port, fn, args, os.getpid()), nprocs=nprocs,
                                 join=False, start_method="spawn")

    def forward(signum, frame):
        for p in context.processes:
            if p.is_alive():
                os.kill(p.pid, signum)

    previous = {}
    try:
        for sig in PREEMPTION_SIGNALS:
            previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: the signals are not ours to catch
        pass
    try:
        while not context.join():
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def init_distributed(plan: LaunchPlan) -> DistInfo:
    """Joins the process group (when there is more than one process) and picks this process's device."""
    if not plan.use_ddp:
        if plan.accelerator == "gpu":
            idx = plan.device_ids[0]
            torch.cuda.set_device(idx)
            return DistInfo(device=torch.device("cuda", idx))
        return DistInfo(device=torch.device("cpu"))
    if "TORCHELASTIC_RUN_ID" in os.environ and "NEST_SSL_SPAWNED" not in os.environ:
        # Under torchrun: if this node's torchrun is killed (SIGKILL gives it no chance to stop its workers), its
        # training processes stop too, so a rerun never trains beside an orphan.
        _exit_with_parent(os.getppid())
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    node_rank = int(os.environ.get("GROUP_RANK", os.environ.get("NODE_RANK", rank // plan.devices_per_node)))
    if plan.accelerator == "gpu":
        device = torch.device("cuda", plan.device_ids[local_rank])
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = dict(backend=backend, rank=rank, world_size=world, timeout=timedelta(minutes=30))
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, node_rank=node_rank, device=device,
                    backend=backend)


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.initialized:
        if info.backend == "nccl":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def broadcast_object(info: DistInfo, obj: Any, src: int = 0) -> Any:
    if not info.initialized:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    if info.initialized:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_ranks_have(info: DistInfo, has_batch: bool) -> bool:
    """The join of uneven data: True when every rank has a batch (one int all-reduced, the count of ranks that
    have none). All ranks get the same answer, so they stop an epoch together instead of one rank waiting forever
    in a collective the others never reach (WeNet's `wenet_join` idea)."""
    if not info.initialized:
        return has_batch
    missing = torch.tensor([0 if has_batch else 1], dtype=torch.int32, device=info.device)
    dist.all_reduce(missing, op=dist.ReduceOp.SUM)
    return int(missing.item()) == 0


def all_gather_objects(info: DistInfo, obj: Any) -> list:
    if not info.initialized:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


# ----------------------------------------------------------------------------------------------------------------
# SyncBatchNorm


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are all-reduced over the process group, on CPU (gloo) as well.

    torch.nn.SyncBatchNorm refuses CPU tensors, so CPU runs with sync_batchnorm use this one: the sums are
    reduced with the differentiable all_reduce, which gives the same statistics (and gradients) as one BatchNorm
    over the union of every rank's batch. The state-dict entries are BatchNorm's.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() // x.size(1)], dtype=x.dtype, device=x.device)
        local = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        total = all_reduce(local)
        c = x.size(1)
        n = total[2 * c]
        mean = total[:c] / n
        var = total[c : 2 * c] / n - mean * mean  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - momentum).add_(momentum * mean.detach())
                self.running_var.mul_(1 - momentum).add_(momentum * unbiased)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """torch's SyncBatchNorm on GPUs, CPUSyncBatchNorm on CPU; parameters and buffers are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def convert(module: nn.Module) -> nn.Module:
        out = module
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
            out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
            if module.affine:
                with torch.no_grad():
                    out.weight = module.weight
                    out.bias = module.bias
            if module.track_running_stats:
                out.running_mean = module.running_mean
                out.running_var = module.running_var
                out.num_batches_tracked = module.num_batches_tracked
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, convert(child))
        return out

    return convert(model)
