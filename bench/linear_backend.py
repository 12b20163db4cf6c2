#!/usr/bin/env python3
"""oneDNN against the BLAS for the fp32 linear products of the 17-layer Conformer, in one process, on this CPU.

    python bench/linear_backend.py [--threads 2] [--rows 200] [--rounds 7]

For each layer shape (d_model 512: q/k/v/out/pos 512x512, feed-forward 512->2048->512, pointwise conv 512->1024,
pre-encode 2560->512, decoder 512->8192) and each product of a training step (forward, grad of the input, grad of
the weight), the time of nest_ssl.modules.linear's oneDNN path and of torch's BLAS path (F.linear / mm with the same
transposed views) alternate `--rounds` times; the medians give GFLOP/s and the ratio oneDNN / BLAS (below 1: oneDNN
is faster). The last line weights the ratios by the products' FLOPs per step. NEST_SSL_LINEAR=auto picks oneDNN on
the CPU vendors listed in linear.py's `_ONEDNN_FASTER_ON` from figures like these.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from nest_ssl.modules import linear as L  # noqa: E402

# (in, out, uses per layer)
SHAPES = [(512, 512, 5), (512, 2048, 2), (2048, 512, 2), (512, 1024, 1), (1024, 512, 1), (2560, 512, 0), (512, 8192, 0)]


def _time(fn, reps: int) -> float:
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=200, help="rows of x: batch x encoder frames (default 200: 2 x 8 s)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--reps", type=int, default=5, help="products per timing")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if L._ONEDNN_LINEAR is None:
        print("torch is built without oneDNN: only the BLAS exists")
        return 0
    L.set_backend("onednn")
    vendor = L.cpu_vendor()
    print(f"CPU vendor {vendor or '?'}, capability {torch.backends.cpu.get_cpu_capability()}, threads {args.threads}, "
          f"rows {args.rows}; auto picks {'onednn' if vendor in L._ONEDNN_FASTER_ON else 'blas'}")
    g = torch.Generator().manual_seed(0)
    n = args.rows
    total = {"onednn": 0.0, "blas": 0.0}
    for k, m, uses in SHAPES:
        x, w, dy = (torch.randn(n, k, generator=g), torch.randn(m, k, generator=g), torch.randn(n, m, generator=g))
        products = {
            "forward": (lambda: L._matmul_nt(x, w), lambda: torch.nn.functional.linear(x, w)),
            "grad_x": (lambda: L._matmul_nt(dy, w.t()), lambda: torch.mm(dy, w)),
            "grad_w": (lambda: L._matmul_nt(dy.t(), x.t()), lambda: torch.mm(dy.t(), x)),
        }
        for name, (ours, blas) in products.items():
            ours(), blas()  # warm-up (primitive creation, packing buffers)
            t = {"onednn": [], "blas": []}
            for _ in range(args.rounds):
                t["onednn"].append(_time(ours, args.reps))
                t["blas"].append(_time(blas, args.reps))
            med = {b: statistics.median(v) for b, v in t.items()}
            flop = 2.0 * n * k * m
            for b in med:
                total[b] += med[b] * (uses * 17 if uses else 1)
            print(f"{k:>5}x{m:<5} {name:<8} oneDNN {flop / med['onednn'] / 1e9:6.1f} GFLOP/s  BLAS "
                  f"{flop / med['blas'] / 1e9:6.1f} GFLOP/s  ratio {med['onednn'] / med['blas']:.2f}")
    print(f"per 17-layer step (products weighted by their uses): oneDNN / BLAS = {total['onednn'] / total['blas']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
