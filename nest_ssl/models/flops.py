"""FLOPs of a model's work counted by torch's FlopCounterMode, with the two corrections our model needs, and the
dense peaks they are measured against (MFU).

``count_flops(fn)`` runs ``fn()`` under ``torch.utils.flop_counter.FlopCounterMode`` and returns the FLOPs of its
matrix products, convolutions and attention (a multiply-add counts 2; elementwise work, the STFT and the optimizer
are not counted, the usual MFU convention), forward and backward alike when ``fn`` runs both. Nothing is written by
hand, so a change of the model's configuration changes the count. Two corrections to torch 2.9's counter:

- our CPU linear layers run oneDNN's ``mkldnn::_linear_pointwise`` (nest_ssl.modules.linear), an op the counter has
  no formula for (it would count 0): while counting, linears take ``F.linear`` (aten.mm/addmm), which it counts;
- its ``convolution_backward`` formula ignores ``groups``: for the depthwise convolutions of the Conformer and of the
  subsampling it counts the weight gradient as a dense convolution (x channels). Here each gradient of a
  convolution costs what its forward costs (the exact count for both gradients of a non-transposed convolution,
  grouped or not).

    count_flops(fn)                                   (total, per aten op) of any callable
    step_flops(model, batch)                          one training step (forward with masking, loss, backward)
    flops_per_audio_second(model, seconds=..., ...)   that, per second of audio, for utterances of one length
    synthetic_batch(B, samples, lengths)              a batch of those shapes for the two above
    dense_peak_tflops(device_name)                    the device's dense bf16/fp16 peak in TFLOP/s, or None

The trainer's telemetry (nest_ssl/train/telemetry.py) calls step_flops between steps, at the shapes it trained on.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from nest_ssl.modules import linear as _linear

__all__ = ["DENSE_PEAK_TFLOPS", "count_flops", "dense_peak_tflops", "flops_per_audio_second", "step_flops",
           "synthetic_batch"]

aten = torch.ops.aten

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
    ("A10G", 125.0),  # the table (AWS's figure)
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


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    # grad_input is a transposed convolution and grad_weight a correlation, each with the forward's multiply-adds
    # (w_shape holds in_channels / groups, so grouped convolutions are counted right).
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def count_flops(fn: Callable[[], Any]) -> Tuple[int, Dict[str, int]]:
    """(total FLOPs, FLOPs per aten op) of running ``fn()`` once (see the module doc for what is counted)."""
    enabled = _linear.ENABLED
    _linear.ENABLED = False  # the oneDNN op is invisible to the counter; F.linear computes the same products
    try:
        with FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: _conv_backward_flop}) as c:
            fn()
    finally:
        _linear.ENABLED = enabled
    per_op = {str(op): int(n) for op, n in c.get_flop_counts().get("Global", {}).items()}
    return int(c.get_total_flops()), per_op


def synthetic_batch(batch_size: int, num_samples: int, lengths: Optional[list[int] | torch.Tensor] = None,
                    device: torch.device | str = "cpu") -> SimpleNamespace:
    """What NESTModel.training_output reads of a batch: clean and noisy audio (B, num_samples), white noise at a
    speech-like level, with `lengths` (a list, or a tensor that is not read on the host; all full when None).
    Shapes decide the FLOPs, not the values."""
    g = torch.Generator().manual_seed(0)
    audio = (0.1 * torch.randn(batch_size, num_samples, generator=g)).to(device)
    noisy = audio + (0.01 * torch.randn(batch_size, num_samples, generator=g)).to(device)
    if lengths is None:
        lens = torch.full((batch_size,), num_samples, dtype=torch.int64, device=device)
    else:
        lens = torch.as_tensor(lengths, dtype=torch.int64).to(device)
    keep = torch.arange(num_samples, device=device)[None, :] < lens[:, None]
    return SimpleNamespace(audio=audio * keep, audio_len=lens, noisy_audio=noisy * keep, noisy_audio_len=lens.clone())


def step_flops(model: torch.nn.Module, batch: Any, *, autocast_dtype: Optional[torch.dtype] = None,
               seed: int = 0) -> int:
    """FLOPs of one training step of a NEST model on ``batch`` (audio, audio_len, noisy_audio, noisy_audio_len):
    forward with masking, loss, backward.

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

    def step():
        with ctx:
            out = model.training_output(batch, apply_mask=True)
        torch.autograd.grad(out.loss, params, allow_unused=True)

    model.eval()
    try:
        with fork:
            torch.manual_seed(seed)
            return count_flops(step)[0]
    finally:
        model.train(was_training)


def flops_per_audio_second(model: torch.nn.Module, *, seconds: float = 10.0, batch_size: int = 2,
                           sample_rate: int = 16000, autocast_dtype: Optional[torch.dtype] = None) -> float:
    """Training FLOPs (forward + backward) per second of audio, for `batch_size` utterances of `seconds` each
    (no padding). Longer utterances cost a little more per second (attention is quadratic in length)."""
    device = next(model.parameters()).device
    batch = synthetic_batch(batch_size, int(round(seconds * sample_rate)), device=device)
    return step_flops(model, batch, autocast_dtype=autocast_dtype) / (batch_size * seconds)
