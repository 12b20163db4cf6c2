"""Linear layers whose fp32 CPU matrix products run in oneDNN instead of the BLAS.

On CPUs where torch's BLAS (MKL) takes a slow code path (measured on an AMD EPYC with AVX-512: MKL's sgemm at
35-45 GFLOP/s on one core for the Conformer's shapes, oneDNN's fp32 matmul at 75-105), the forward and both
products of the backward go through `torch.ops.mkldnn._linear_pointwise`, oneDNN's fp32 matmul. It computes the
same sums in fp32 (no reduced-precision math: relative differences to the BLAS at the 1e-7 level, from the order of
summation). Everything else (GPU, other dtypes, autocast, torch builds without oneDNN, inputs that need a double
backward) uses `torch.nn.functional.linear`. `Linear` is an `nn.Linear` (same arguments, initialisation and
state-dict names) that calls `linear`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Linear", "linear", "use_onednn"]

_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None

# Module-level switch (benchmarks turn it off to measure the BLAS path in the same process).
ENABLED = True


def use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True where the oneDNN path computes exactly what F.linear would (fp32 on the CPU, outside autocast)."""
    return (
        ENABLED
        and _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() > 0
        and not torch.is_autocast_enabled("cpu")
        # torch.compile traces F.linear (Inductor cannot lower this op; it picks its own CPU matmul kernels)
        and not torch.compiler.is_compiling()
    )


def _strided_2d(t: torch.Tensor) -> torch.Tensor:
    """t itself if oneDNN can read it in place (row- or column-major, possibly with padded rows), else a copy."""
    s0, s1 = t.stride()
    if (s1 == 1 and s0 >= t.shape[1]) or (s0 == 1 and s1 >= t.shape[0]):
        return t
    return t.contiguous()


def _matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """a (N, K) @ b (M, K)^T (+ bias) in oneDNN fp32; a and b may be transposed views (oneDNN reads the strides)."""
    return _ONEDNN_LINEAR(_strided_2d(a), _strided_2d(b), bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias):
        ctx.save_for_backward(x2d, weight)
        ctx.has_bias = bias is not None
        return _matmul_nt(x2d, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x2d, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _matmul_nt(grad, weight.t())  # grad @ W
        if ctx.needs_input_grad[1]:
            grad_w = _matmul_nt(grad.t(), x2d.t())  # grad^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.linear, with fp32 CPU products in oneDNN (see the module docstring)."""
    if not use_onednn(x, weight) or (bias is not None and bias.dtype != torch.float32):
        return nn.functional.linear(x, weight, bias)
    lead = x.shape[:-1]
    out = _OneDNNLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*lead, weight.shape[0])


class Linear(nn.Linear):
    """nn.Linear (same constructor, initialisation and parameters) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
