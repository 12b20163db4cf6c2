"""An alternate signal stack for the main thread, which oneDNN's fp32 sgemm needs to be safe against signals.

oneDNN's AVX/AVX2 and AVX-512 sgemm kernels (`jit_avx_gemm_f32`, `jit_avx512_common_gemm_f32`: the `x64:gemm:jit`
implementation of the fp32 inner product that `torch.ops.mkldnn._linear_pointwise` runs for plain weights) move the
stack pointer into a heap work buffer when the product's K does not fit their stack budget (K > 252 with AVX2, > 84
with AVX-512): `mov rsp, ws`. A signal delivered to that thread meanwhile gets its frame (1-3 KB with the AVX state)
written below the stack pointer, i.e. over the heap chunks in front of the buffer; glibc later aborts with
"corrupted size vs. prev_size while consolidating", or the process segfaults. Python installs its handlers (SIGTERM
from the trainer, SIGINT, the DataLoader's SIGCHLD) with SA_ONSTACK, so once the thread has an alternate signal stack
the kernel writes the frame there instead. Linux delivers a process-directed signal to the main thread whenever that
thread does not block it, so the main thread's stack is the one to set (done once, and never taken down: the buffer
lives as long as the process).
"""

from __future__ import annotations

import ctypes
import sys
import threading

__all__ = ["ensure_main_thread_signal_stack"]

_SS_DISABLE = 2  # Linux <signal.h>
_SIZE = 1 << 16  # room for the frame (with the AVX-512 state) and CPython's C-level handler, which only sets a flag
_buffer = None  # keeps our stack alive


class _StackT(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def ensure_main_thread_signal_stack() -> bool:
    """True when the main thread has an alternate signal stack (one set before, e.g. by faulthandler, or ours, set
    now). False where it cannot be known or set: not Linux, or called from another thread."""
    global _buffer
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        current = _StackT()
        if libc.sigaltstack(None, ctypes.byref(current)) != 0:
            return False
        if not current.ss_flags & _SS_DISABLE:
            return True
        buf = ctypes.create_string_buffer(_SIZE)
        new = _StackT(ctypes.cast(buf, ctypes.c_void_p), 0, _SIZE)
        if libc.sigaltstack(ctypes.byref(new), None) != 0:
            return False
    except (OSError, AttributeError):
        return False
    _buffer = buf
    return True
