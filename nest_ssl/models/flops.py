"""FLOPs of a training step, counted from the model, and the dense peaks they are measured against (MFU).

The count is PyTorch's own (torch.utils.flop_counter.FlopCounterMode): every matmul, convolution and attention
kernel that the forward and backward of a real training step dispatch, with the shapes they ran at. Nothing is
written by hand, so a change of the model's configuration changes the count. Elementwise work, the STFT of the
preprocessor and the optimizer are not counted (they are not matmul FLOPs; MFU conventionally leaves them out).

    count_flops(fn)                                   FLOPs of any callable (forward and whatever backward it runs)
    count_flops_mode()                                the counter itself, as a context manager
    step_flops(model, batch)                          one training step (forward + backward) on a batch
    flops_per_audio_second(model, seconds=..., ...)   that, per second of audio, for utterances of one length
    dense_peak_tflops(device_name)                    the device's dense bf16/fp16 peak in TFLOP/s, or None

The trainer counts the real steps it runs (nest_ssl/train/telemetry.py) rather than calling these.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["DENSE_PEAK_TFLOPS", "count_flops", "count_flops_mode", "dense_peak_tflops", "flops_per_audio_second", "step_flops",
           "synthetic_batch"]

# Dense (no 2:4 sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' data sheets. Matched against
# torch.cuda.get_device_name() in this order (first substring wins, case-insensitive): the more specific first.
DENSE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM / HBM3
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 125.0),  # AWS's A10G: 70 dense fp16 by NVIDIA's sheet, 125 by AWS's; the table says 125
    ("V100", 125.0),
)


def dense_peak_tflops(device_name: Optional[str]) -> Optional[float]:
    """The dense peak for a device name (torch.cuda.get_device_name()); None for a CPU or an unknown device."""
    if not device_name:
        return None
    name = device_name.lower()
    for key, peak in DENSE_PEAK_TFLOPS:
        if key.lower() in name:
            return peak
    return None


def _onednn_linear_flops(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's fp32 linear (nest_ssl/modules/linear.py runs the CPU's Linear layers through it): a (N, K) times
    b (M, K) transposed, 2*N*M*K, as aten.mm counts its product. PyTorch's counter has no formula for it."""
    *_, k = a_shape
    rows = 1
    for s in a_shape[:-1]:
        rows *= s
    return 2 * rows * b_shape[0] * k


# Operators the counter does not know, with their formulas (the keys exist only on torch builds with oneDNN).
_EXTRA_FORMULAS = {}
if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    _EXTRA_FORMULAS[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops


def count_flops_mode() -> FlopCounterMode:
    """A FlopCounterMode that also knows the operators above (use as a context manager; get_total_flops())."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs that `fn()` dispatches (forward, and backward if fn calls it), as FlopCounterMode counts them."""
    counter = count_flops_mode()
    with counter:
        fn()
    return int(counter.get_total_flops())


def synthetic_batch(batch_size: int, num_samples: int, lengths: Optional[list[int]] = None,
                    device: torch.device | str = "cpu") -> SimpleNamespace:
    """What NESTModel.training_output reads of a batch: clean and noisy audio (B, num_samples), white noise at a
    speech-like level, with `lengths` (all full when None). Shapes decide the FLOPs, not the values."""
    g = torch.Generator().manual_seed(0)
    audio = 0.1 * torch.randn(batch_size, num_samples, generator=g)
    noisy = audio + 0.01 * torch.randn(batch_size, num_samples, generator=g)
    lens = torch.tensor(lengths if lengths is not None else [num_samples] * batch_size, dtype=torch.int64)
    for i, n in enumerate(lens.tolist()):
        audio[i, n:] = 0
        noisy[i, n:] = 0
    return SimpleNamespace(audio=audio.to(device), audio_len=lens.to(device), noisy_audio=noisy.to(device),
                           noisy_audio_len=lens.clone().to(device))


def step_flops(model: torch.nn.Module, batch: Any, *, autocast_dtype: Optional[torch.dtype] = None,
               seed: int = 0) -> int:
    """FLOPs of one training step (model.training_output with masking, then the backward) on `batch`.

    Without side effects, so that a training run can count between its steps: the model runs in eval mode (no
    running statistic moves, no SyncBatchNorm collective; dropout and batch norm are not matmul FLOPs, so the count
    is the training step's), the backward is torch.autograd.grad (no .grad is written and DDP's gradient hooks do
    not fire), and the masking, which is random and decides how many tokens the decoder sees, is drawn under a
    fixed seed with the caller's RNG state restored.
    """
    device = next(model.parameters()).device
    was_training = model.training
    params = [p for p in model.parameters() if p.requires_grad]
    fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()

    def run():
        with ctx:
            out = model.training_output(batch, apply_mask=True)
        torch.autograd.grad(out.loss, params, allow_unused=True)

    model.eval()
    try:
        with fork:
            torch.manual_seed(seed)
            return count_flops(run)
    finally:
        model.train(was_training)


def flops_per_audio_second(model: torch.nn.Module, *, seconds: float = 10.0, batch_size: int = 2,
                           sample_rate: int = 16000, autocast_dtype: Optional[torch.dtype] = None) -> float:
    """Training FLOPs (forward + backward) per second of audio, for `batch_size` utterances of `seconds` each
    (no padding). Longer utterances cost a little more per second (attention is quadratic in length)."""
    device = next(model.parameters()).device
    batch = synthetic_batch(batch_size, int(round(seconds * sample_rate)), device=device)
    return step_flops(model, batch, autocast_dtype=autocast_dtype) / (batch_size * seconds)
