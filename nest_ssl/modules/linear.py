"""Linear layers whose fp32 CPU matrix products can run in oneDNN instead of the BLAS.

Which library computes the fp32 CPU products (the forward and both products of the backward) is chosen once per
process, `backend()`:

- `NEST_SSL_LINEAR=blas`: torch's BLAS (MKL), i.e. `torch.nn.functional.linear`.
- `NEST_SSL_LINEAR=onednn`: `torch.ops.mkldnn._linear_pointwise`, oneDNN's fp32 inner product.
- `NEST_SSL_LINEAR=auto` (default): oneDNN on the CPU vendors where it was measured to be faster, the BLAS elsewhere.
  MKL takes a generic, slow path on AMD CPUs; measured with `python bench/linear_backend.py` (the 17-layer
  Conformer's products, both libraries alternating in one process): on the 2-core AMD EPYC (Zen 3, AVX2) of
  docs/training.md oneDNN takes 0.47-1.10x the BLAS's time per product, 0.72x weighted over a step (2 threads). On
  Intel Xeons MKL is Intel's own and the 17-layer step measured only 0.95-0.97x NeMo's (which uses the BLAS) with
  oneDNN on, so the BLAS stays there; other vendors are unmeasured and get the BLAS. `set_backend()` does the same
  from code (benchmarks, tests).

Both compute the same fp32 sums (no reduced-precision math; relative differences at the 1e-7 level, from the order
of summation). Everything else (GPU, other dtypes, autocast, torch builds without oneDNN, empty inputs) always uses
`torch.nn.functional.linear`. `Linear` is an `nn.Linear` (same arguments, initialisation and state-dict names) that
calls `linear`.

Signals. oneDNN's fp32 sgemm kernels point the stack pointer at a heap work buffer while they run (for K > 252 with
AVX2); a signal delivered to that thread meanwhile writes its frame over the heap (glibc: "corrupted size vs.
prev_size while consolidating", exit 134, or a segfault; SIGTERM from a scheduler, Ctrl-C and the DataLoader's
SIGCHLD all qualify). So the oneDNN backend is only used once the main thread, which Linux hands process-directed
signals to, has an alternate signal stack (nest_ssl/modules/signal_stack.py), and the BLAS is used where that cannot
be set up. tests/test_linear_signals.py floods a process computing these products with SIGTERM.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from nest_ssl.errors import UserError
from nest_ssl.modules.signal_stack import ensure_main_thread_signal_stack

__all__ = ["Linear", "linear", "use_onednn", "backend", "set_backend", "BACKEND_ENV"]

log = logging.getLogger(__name__)

_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None

BACKEND_ENV = "NEST_SSL_LINEAR"
_CHOICES = ("auto", "onednn", "blas")
# CPU vendors (/proc/cpuinfo vendor_id) where oneDNN's products were measured faster than the BLAS's.
_ONEDNN_FASTER_ON = frozenset({"AuthenticAMD"})

# Module-level switch (benchmarks turn it off to measure the BLAS path in the same process).
ENABLED = True

_backend: str | None = None  # "onednn" or "blas" once resolved


def cpu_vendor() -> str:
    """The CPU's vendor_id ("AuthenticAMD", "GenuineIntel", ...), "" where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _resolve(requested: str, source: str) -> str | None:
    """requested backend -> "onednn" / "blas"; None where oneDNN needs the main thread and this is not it."""
    value = requested.strip().lower()
    if value not in _CHOICES:
        raise UserError(f"{source}={requested!r}: expected one of {', '.join(_CHOICES)}")
    if value == "auto":
        value = "onednn" if cpu_vendor() in _ONEDNN_FASTER_ON else "blas"
    if value == "blas" or _ONEDNN_LINEAR is None:
        return "blas"
    if ensure_main_thread_signal_stack():
        return "onednn"
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None  # decided on the main thread's first product
    log.warning("no alternate signal stack could be set for the main thread: fp32 linear layers use the BLAS")
    return "blas"


def backend() -> str:
    """The library of this process's fp32 CPU linear products: "onednn" or "blas" (see the module docstring)."""
    global _backend
    if _backend is None:
        chosen = _resolve(os.environ.get(BACKEND_ENV, "auto"), BACKEND_ENV)
        if chosen is None:
            return "blas"
        _backend = chosen
        log.debug("fp32 CPU linear products: %s (CPU vendor %r)", chosen, cpu_vendor())
    return _backend


def set_backend(name: str) -> str:
    """Chooses the backend from code ("auto", "onednn" or "blas", as NEST_SSL_LINEAR); returns what it resolved to.
    "onednn" must be set from the main thread (it sets up the main thread's alternate signal stack)."""
    global _backend
    chosen = _resolve(name, "set_backend")
    _backend = chosen or "blas"
    return _backend


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
        and backend() == "onednn"
    )


def _strided_2d(t: torch.Tensor) -> torch.Tensor:
    """t itself if dense row- or column-major, else a row-major copy. oneDNN is given the real strides either way
    (ideep describes the weight by them), but only dense layouts reach its sgemm; a padded or zero-stride one would
    run its slow reference kernel."""
    if t.is_contiguous() or t.t().is_contiguous():
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
