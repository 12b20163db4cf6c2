"""oneDNN's fp32 linear products survive signals (nest_ssl/modules/linear.py, nest_ssl/modules/signal_stack.py).

oneDNN's sgemm moves the stack pointer into a heap buffer while it runs; a signal arriving then wrote its frame over
the heap: SIGTERM after step 3 of a CPU run aborted with glibc's "corrupted size vs. prev_size while consolidating"
(exit 134). Here a child process computes the forward and both backward products of `linear` (K = 512 and 2048,
above the kernel's stack budget) in a loop, with a SIGTERM handler as the trainer installs one, while this test
floods it with SIGTERM. Without the main thread's alternate signal stack the child died within seconds in every try
(segfault or exit 134); the test wants it to finish cleanly with bit-identical results.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nest_ssl.modules import linear as linear_mod

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import signal, sys, time, torch
from nest_ssl.modules import linear as L
torch.set_num_threads(int(sys.argv[1]))
assert L.set_backend("onednn") == "onednn"
got = [0]
signal.signal(signal.SIGTERM, lambda s, f: got.__setitem__(0, got[0] + 1))
g = torch.Generator().manual_seed(0)
x = torch.randn(126, 512, generator=g, requires_grad=True)
w = torch.randn(2048, 512, generator=g, requires_grad=True)
b = torch.randn(2048, generator=g, requires_grad=True)
dy = torch.randn(126, 2048, generator=g)
assert L.use_onednn(x, w)

def products():
    y = L.linear(x, w, b)
    return (y.detach(), *torch.autograd.grad(y, [x, w, b], dy))

ref = products()
print("ready", flush=True)
start, n = time.time(), 0
while time.time() - start < float(sys.argv[2]):
    out = products()
    n += 1
    assert all(torch.equal(o, r) for o, r in zip(out, ref)), "results changed under signals"
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the flood must not kill the interpreter's shutdown
print("ok", n, got[0], flush=True)
"""


@pytest.mark.skipif(linear_mod._ONEDNN_LINEAR is None, reason="torch built without oneDNN: the BLAS is always used")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the alternate signal stack is set up on Linux only")
@pytest.mark.parametrize("threads", [1, 2])
def test_onednn_products_survive_a_sigterm_flood(threads):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS=str(threads))
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(threads), "6"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        sent = 0
        while child.poll() is None:
            try:
                os.kill(child.pid, signal.SIGTERM)
                sent += 1
            except ProcessLookupError:
                break
            time.sleep(0.0005)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, f"exit {child.returncode} after {sent} SIGTERMs: {err[-2000:]}"
    word, calls, handled = out.split()
    assert word == "ok" and int(calls) > 0 and int(handled) > 100, out
