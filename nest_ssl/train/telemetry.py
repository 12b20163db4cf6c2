"""Throughput telemetry of a training run: how fast, how much of the device's peak, and where the time and compute go.

Logged to metrics.jsonl (and TensorBoard) at every log step, over the steps since the previous log step:

    audio_per_s        audio seconds trained per second of training time, all ranks (= `throughput`)
    tokens_per_s       valid (unpadded) encoder frames per second, all ranks
    step_tflop         FLOPs of one optimizer step on this rank, in TFLOP (the mean over the window)
    tflops_per_device  model TFLOP/s of this rank: counted FLOPs / training time
    mfu                tflops_per_device / the device's dense bf16 peak (nest_ssl.models.flops); null on a CPU or
                       an unknown device
    data_wait_share    share of training time this rank spent waiting for the data loader's next batch
    padding_share      padded samples / computed samples (B x the longest utterance, summed over batches), all ranks

FLOPs are counted by PyTorch's FlopCounterMode over the forward and backward of the model on the shapes the
steps ran at (nest_ssl.models.flops.step_flops: the padded batch size and length, the first batch's lengths), at
log time, outside the step, without side effects: the training step itself never runs under the counter, so
counting cannot change its numerics (a dispatch mode changes some kernels' rounding) and a resumed run trains
bit for bit as an uninterrupted one. Each new padded shape is counted once, up to `max_counted` shapes; the FLOPs
of later new shapes come from a least-squares fit over the counted ones, FLOPs per utterance = a * samples +
c * samples^2 (the linear layers and the quadratic attention). The decoder runs on the masked tokens only, whose
number is random: the count uses one seeded draw, so a step's figure is exact to about a percent.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from nest_ssl.models.flops import dense_peak_tflops

__all__ = ["Telemetry", "device_name"]


def device_name(device: torch.device) -> Optional[str]:
    """torch.cuda.get_device_name for a CUDA device; None otherwise (the CPU has no peak in the table)."""
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return None


class _FlopModel:
    """FLOPs per step by padded shape: counted ones, and a fit flops/B = a*S + c*S^2 for the others."""

    def __init__(self, max_counted: int):
        self.max_counted = max_counted
        self.counted: dict[tuple[int, int], float] = {}

    def wants(self, shape: tuple[int, int]) -> bool:
        return shape not in self.counted and len(self.counted) < self.max_counted

    def add(self, shape: tuple[int, int], flops: float) -> None:
        self.counted[shape] = flops

    def estimate(self, shape: tuple[int, int]) -> Optional[float]:
        if shape in self.counted:
            return self.counted[shape]
        if not self.counted:
            return None
        b, s = shape
        points = [(bb, ss, f) for (bb, ss), f in self.counted.items() if bb > 0 and ss > 0]
        if len({ss for _, ss, _ in points}) >= 2:
            x = torch.tensor([[ss, ss * ss] for _, ss, _ in points], dtype=torch.float64)
            y = torch.tensor([f / bb for bb, _, f in points], dtype=torch.float64)
            coef = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
            return float(b * (coef[0] * s + coef[1] * s * s))
        bb, ss, f = min(points, key=lambda p: abs(p[1] - s))  # one length counted: scale by samples
        return f * (b * s) / (bb * ss)


class Telemetry:
    """One rank's window of throughput figures between log steps (see the module's docstring)."""

    def __init__(self, device: torch.device, sample_rate: int,
                 count_fn: Optional[Callable[[tuple[int, int], list[int]], float]] = None, *, max_counted: int = 8,
                 peak_tflops: Optional[float] = None):
        """`count_fn(shape, lengths)`: the FLOPs of one step on a batch of that (batch size, samples) shape and
        those lengths (the trainer's is nest_ssl.models.flops.step_flops); None: FLOPs are not reported."""
        self.sample_rate = sample_rate
        self.peak_tflops = peak_tflops if peak_tflops is not None else dense_peak_tflops(device_name(device))
        self.flop_model = _FlopModel(max_counted)
        self.count_fn = count_fn
        self.lengths: dict[tuple[int, int], torch.Tensor] = {}
        self._reset()

    def _reset(self) -> None:
        self.train_time = 0.0
        self.data_wait = 0.0
        self.steps = 0
        self.audio_seconds = 0.0  # all ranks
        self.tokens = 0.0  # all ranks
        self.computed_seconds = 0.0  # all ranks: batch size x longest utterance
        self.shapes: dict[tuple[int, int], int] = {}  # padded shape -> micro-batches of the window

    def micro_batch(self, batch) -> None:
        """After a micro-batch: its padding, and its shape for the FLOPs (its lengths kept if the shape is new).
        Nothing is read from the device (the trainer's one host synchronisation per step stays one): the lengths
        of a new shape stay a device tensor until the FLOP count, which needs none of their values on the host."""
        shape = (int(batch.audio.shape[0]), int(batch.audio.shape[1]) if batch.audio.dim() > 1 else 0)
        self.shapes[shape] = self.shapes.get(shape, 0) + 1
        if self.flop_model.wants(shape) and shape not in self.lengths:
            self.lengths[shape] = batch.audio_len.detach().clone()

    def _count_new_shapes(self) -> None:
        for shape in list(self.shapes):
            if self.count_fn is not None and self.flop_model.wants(shape) and shape in self.lengths:
                self.flop_model.add(shape, float(self.count_fn(shape, self.lengths.pop(shape))))
        self.lengths.clear()

    def step(self, step_time: float, data_wait: float, audio_seconds: float, tokens: float,
             computed_seconds: float = 0.0) -> None:
        """After an optimizer step: its training time, of which `data_wait` waiting for data, and the all-rank
        audio seconds and valid tokens it trained on and audio seconds it computed (padding included)."""
        self.steps += 1
        self.train_time += step_time
        self.data_wait += data_wait
        self.audio_seconds += audio_seconds
        self.tokens += tokens
        self.computed_seconds += computed_seconds

    def metrics(self) -> dict[str, Optional[float]]:
        """The window's figures (module docstring), and a new window."""
        t = max(self.train_time, 1e-9)
        self._count_new_shapes()
        flops, known = 0.0, bool(self.shapes)
        for shape, n in self.shapes.items():
            f = self.flop_model.estimate(shape)
            if f is None:
                known = False
                break
            flops += n * f
        tflops = flops / t / 1e12 if known else None
        out = {
            "audio_per_s": self.audio_seconds / t,
            "tokens_per_s": self.tokens / t,
            "step_tflop": flops / max(1, self.steps) / 1e12 if known else None,
            "tflops_per_device": tflops,
            "mfu": tflops / self.peak_tflops if (tflops is not None and self.peak_tflops) else None,
            "data_wait_share": min(1.0, self.data_wait / t),
            "padding_share": 1.0 - self.audio_seconds / self.computed_seconds if self.computed_seconds > 0 else 0.0,
            "train_time": self.train_time,
        }
        self._reset()
        return out


class DataWaitClock:
    """Seconds spent blocked in the data loader's `next()`, read and reset once per optimizer step."""

    def __init__(self):
        self.seconds = 0.0

    def timed_next(self, it):
        t0 = time.perf_counter()
        try:
            return next(it)
        finally:
            self.seconds += time.perf_counter() - t0

    def take(self) -> float:
        s, self.seconds = self.seconds, 0.0
        return s
