"""The largest batch per duration bucket that fits a memory budget (what NeMo's OOMptimizer does; `nest-ssl
tune-batch`), printed as the two train_ds lines to paste.

A batch of a bucket is sized for its longest cut: B utterances of the bin's upper duration D (lengths padded to
it), through a whole training step: forward with masking, backward, the optimizer's update (its state exists from
the first step), and, for DDP, the gradient buckets DDP allocates beside the gradients (one more copy of the
trainable parameters' bytes, unless gradient_as_bucket_view).

* On a GPU, by trying steps: for each bucket, from the longest, the batch doubles until a step runs out of memory
  or its peak (torch.cuda.max_memory_allocated, plus the DDP buckets) passes the budget, then a bisection between
  the last that fit and the first that did not.
* On the CPU, by a memory model fitted to measured peaks: peak bytes = static + a + b*B*D + c*B*D^2 (activations
  grow with the audio in the batch, attention scores with B*D^2; `static` is the model, its gradients and the
  optimizer state, counted from the tensors), the step's peak measured at a few small sizes with torch's
  profiler (profile_memory: the CPU allocator's running total of live bytes, the figure bench/model_step.py
  --checkpointing-memory reads), least squares for a, b, c, then B = the largest that the model keeps in budget.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from nest_ssl.errors import UserError
from nest_ssl.models.flops import synthetic_batch

__all__ = ["MemoryModel", "StepRunner", "TuneResult", "fit_memory_model", "format_config_lines",
           "search_gpu", "static_bytes", "tune_cpu"]

log = logging.getLogger(__name__)


class StepRunner:
    """One full training step (forward with masking, backward, optimizer step, zero_grad) of `model` on a
    synthetic batch of B utterances of D seconds; what tune-batch measures."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, sample_rate: int,
                 autocast_dtype: Optional[torch.dtype] = None):
        self.model = model.train()
        self.optimizer = optimizer
        self.sample_rate = sample_rate
        self.autocast_dtype = autocast_dtype
        self.device = next(model.parameters()).device

    def __call__(self, batch_size: int, seconds: float) -> None:
        batch = synthetic_batch(batch_size, int(round(seconds * self.sample_rate)), device=self.device)
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
               else contextlib.nullcontext())
        with ctx:
            out = self.model.training_output(batch, apply_mask=True)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def static_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ddp: bool, grads: bool = True) -> int:
    """Bytes held across steps: weights and buffers, the optimizer's state, DDP's gradient buckets, and (`grads`)
    the gradients, which a measured step's peak already contains (they are freed by zero_grad(set_to_none))."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if torch.is_tensor(v))
    return params + buffers + (trainable if grads else 0) + state + (trainable if ddp else 0)


def cpu_step_peak_bytes(step: Callable[[], None]) -> int:
    """The peak of the CPU allocator's running total of bytes allocated during `step()` and not yet freed (torch's
    profiler with profile_memory; the event tree is a torch-internal structure, as in bench/model_step.py)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    totals = [n.extra_fields.total_allocated for n in walk(prof.profiler.kineto_results.experimental_event_tree())
              if n.tag == _EventType.Allocation]
    return max(totals) if totals else 0


@dataclass
class MemoryModel:
    """Peak bytes of a step = static + a + b*B*D + c*B*D^2 (B utterances of D seconds)."""

    static: float
    a: float
    b: float
    c: float

    def peak(self, batch_size: int, seconds: float) -> float:
        x = batch_size * seconds
        return self.static + self.a + self.b * x + self.c * x * seconds

    def largest_batch(self, seconds: float, budget: float) -> int:
        per_utterance = self.b * seconds + self.c * seconds * seconds
        room = budget - self.static - self.a
        if per_utterance <= 0:
            return 0
        return max(0, math.floor(room / per_utterance))


def fit_memory_model(points: Sequence[tuple[int, float, float]], static: float) -> MemoryModel:
    """Least squares over measured (B, D, step peak bytes above static); c is dropped (0) when the fit makes it
    negative, which tiny models whose attention is small next to the rest can give."""
    x = torch.tensor([[1.0, b * d, b * d * d] for b, d, _ in points], dtype=torch.float64)
    y = torch.tensor([[p] for _, _, p in points], dtype=torch.float64)
    a, b, c = torch.linalg.lstsq(x, y).solution.squeeze(1).tolist()
    if c < 0:
        a, b = torch.linalg.lstsq(x[:, :2], y).solution.squeeze(1).tolist()
        c = 0.0
    return MemoryModel(static=float(static), a=float(a), b=float(b), c=float(c))


@dataclass
class TuneResult:
    bins: list[float]
    batch_sizes: list[int]
    method: str  # "gpu search" or "cpu memory model"
    budget_bytes: float
    model: Optional[MemoryModel] = None
    measured: list[tuple[int, float, float]] = field(default_factory=list)  # (B, D, peak bytes)


def probe_sizes(bins: Sequence[float], max_probe_seconds: float) -> list[tuple[int, float]]:
    """Small sizes to measure on the CPU: two batch sizes at two lengths (the shortest bin and the longest, capped
    at max_probe_seconds), so that B*D and B*D^2 vary independently."""
    short = min(bins[0], max_probe_seconds)
    long = min(bins[-1], max_probe_seconds)
    if long <= short * 1.5:
        long = short * 2
    return [(1, short), (2, short), (1, long), (2, long), (3, (short + long) / 2)]


def tune_cpu(run_step: StepRunner, bins: Sequence[float], budget_bytes: float, *, ddp: bool = False,
             probes: Optional[Sequence[tuple[int, float]]] = None, max_probe_seconds: float = 8.0) -> TuneResult:
    """The CPU path: measure the step's peak at the probe sizes, fit the memory model, size every bucket."""
    run_step(1, min(bins[0], max_probe_seconds))  # the optimizer's state exists from the first step on
    static = static_bytes(run_step.model, run_step.optimizer, ddp, grads=False)
    measured = []
    for b, d in probes or probe_sizes(bins, max_probe_seconds):
        gc.collect()
        peak = cpu_step_peak_bytes(lambda: run_step(b, d))
        measured.append((b, d, float(peak)))
        log.info("tune-batch: %d x %.2f s: step peak %.1f MB above the static %.1f MB", b, d, peak / 2**20,
                 static / 2**20)
    model = fit_memory_model(measured, static)
    sizes = [model.largest_batch(d, budget_bytes) for d in bins]
    return TuneResult(list(bins), sizes, "cpu memory model", budget_bytes, model, measured)


def _fits_gpu(run_step: StepRunner, batch_size: int, seconds: float, budget: float, ddp_extra: int) -> bool:
    device = run_step.device
    run_step.optimizer.zero_grad(set_to_none=True)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        run_step(batch_size, seconds)
        torch.cuda.synchronize(device)
    except torch.cuda.OutOfMemoryError:
        run_step.optimizer.zero_grad(set_to_none=True)
        return False
    return torch.cuda.max_memory_allocated(device) + ddp_extra <= budget


def search_gpu(run_step: StepRunner, bins: Sequence[float], budget_bytes: float, *, ddp: bool = False,
               max_batch: int = 4096) -> TuneResult:
    """The GPU path: for each bucket (longest first, whose result bounds the shorter ones from below), double the
    batch until a step does not fit, then bisect."""
    ddp_extra = sum(p.numel() * p.element_size() for p in run_step.model.parameters() if p.requires_grad) if ddp else 0
    sizes: dict[float, int] = {}
    floor = 0
    for d in sorted(bins, reverse=True):
        lo = floor  # a shorter bucket fits at least what a longer one did
        hi = None
        b = max(1, 2 * lo)
        while b <= max_batch:
            if _fits_gpu(run_step, b, d, budget_bytes, ddp_extra):
                lo = b
                b *= 2
            else:
                hi = b
                break
        hi = hi or max_batch + 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _fits_gpu(run_step, mid, d, budget_bytes, ddp_extra):
                lo = mid
            else:
                hi = mid
        sizes[d] = lo
        floor = lo
        log.info("tune-batch: bucket up to %.2f s: batch %d", d, lo)
    return TuneResult(list(bins), [sizes[d] for d in bins], "gpu search", budget_bytes)


def format_config_lines(result: TuneResult, section: str = "model.train_ds") -> str:
    """The overrides to paste on the `nest-ssl train` (or NeMo) command line, as NeMo's OOMptimizer prints its
    profile; `++` adds the keys the shipped yaml does not list (use_bucketing, the bins) or overrides them."""
    zero = [d for d, b in zip(result.bins, result.batch_sizes) if b < 1]
    if zero:
        raise UserError(f"tune-batch: not even one utterance of {zero[0]:g} s fits in "
                        f"{result.budget_bytes / 2**30:.2f} GiB; raise --memory-gb, lower the longest bin, or "
                        "enable model.encoder.activation_checkpointing")
    bins = ",".join(f"{d:g}" for d in result.bins)
    sizes = ",".join(str(b) for b in result.batch_sizes)
    return (f"++{section}.use_bucketing=true ++{section}.bucket_duration_bins=[{bins}] "
            f"++{section}.bucket_batch_size=[{sizes}]")
