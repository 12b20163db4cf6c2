#!/usr/bin/env python
"""Padding share: padded encoder frames / computed encoder frames, with the recipe's bucketing and without, same run.

    .venv/bin/python bench/padding.py [--num-cuts 20000] [--batch-size 8] [--batch-duration 600]

Cuts (metadata only, no audio): a LibriLight-like distribution of the recipe's training windows (egs/librilight:
`nest-ssl cuts windows` between 1 and 20 s, VAD segments merged across short pauses): 85% U(5, 20) s, 15% U(1, 5) s.
Batches come from nest_ssl's sampler (build_sampler, one pass, shuffled):

  recipe bucketing   use_bucketing with 30 bins estimated by `nest-ssl cuts estimate-bins` (stage 5 of the recipes)
  no bucketing       the same batch size, a shuffled stream

for a fixed number of cuts per batch (the NEST yaml's batch_size) and for a batch duration (the GPU setting).
A batch computes B x (its longest cut's encoder frames); its padding is what exceeds each cut's own frames (80 ms
encoder frames after 8x subsampling of 10 ms features).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sampler import generate  # noqa: E402  (bench/sampler.py: the LibriLight-like window durations)


def frames(duration: float) -> int:
    return math.ceil(duration / 0.08)


def padding_share(manifest: str, cfg: dict) -> tuple[float, int, float]:
    """(padded / computed frames, batches, mean cuts per batch) of one pass of build_sampler."""
    from nest_ssl.data.manifests import open_source
    from nest_ssl.data.sampler import build_sampler

    sampler = build_sampler(open_source(manifest), cfg, seed=0)
    computed = used = batches = cuts = 0
    for batch in sampler:
        lens = [frames(c.duration) for c in batch]
        computed += len(lens) * max(lens)
        used += sum(lens)
        batches += 1
        cuts += len(lens)
    return (computed - used) / computed, batches, cuts / max(batches, 1)


def main(argv=None) -> int:
    import logging

    logging.disable(logging.WARNING)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-cuts", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=8, help="cuts per batch (the NEST yaml's batch_size)")
    ap.add_argument("--batch-duration", type=float, default=600.0, help="seconds per batch (a GPU's setting)")
    ap.add_argument("--num-buckets", type=int, default=30)
    args = ap.parse_args(argv)

    from nest_ssl.data.manifests import open_source
    from nest_ssl.prepare.bucket_bins import estimate_bucket_bins

    with tempfile.TemporaryDirectory(prefix="nest_bench_padding_") as tmp:
        manifest = os.path.join(tmp, "cuts.jsonl.gz")
        generate(manifest, args.num_cuts, max_duration=20.0)  # the recipe's 1-20 s windows
        bins = estimate_bucket_bins(open_source(manifest), args.num_buckets)
        print(f"{args.num_cuts} LibriLight-like windows (1-20 s); {len(bins) + 1} buckets, bins from "
              f"`nest-ssl cuts estimate-bins`: {bins[0]:.2f} .. {bins[-1]:.2f} s")
        common = {"shuffle": True, "drop_last": False, "bucket_buffer_size": 10000, "shuffle_buffer_size": 10000}
        for size_key, size in (("batch_size", args.batch_size), ("batch_duration", args.batch_duration)):
            for name, extra in (("recipe bucketing", {"use_bucketing": True, "bucket_duration_bins": bins}),
                                ("no bucketing", {"use_bucketing": False})):
                t0 = time.perf_counter()
                share, n, per = padding_share(manifest, {**common, size_key: size, **extra})
                print(f"  {size_key}={size:g}: {name:16s} padding share {share:6.1%}  ({n} batches, {per:.1f} cuts "
                      f"per batch) [{time.perf_counter() - t0:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
