"""Sampler benchmark: one epoch of the nest-ssl sampler over a generated lazy manifest of one million cuts.

    .venv/bin/python bench/sampler.py [--num-cuts 1000000] [--keep DIR]

Writes a Lhotse CutSet manifest (.jsonl.gz, LibriLight-like window durations, no audio needed: the sampler reads
metadata only) to a temporary directory, then runs each phase in a fresh subprocess so its peak RSS is its own:

  baseline   plain lazy iteration with lhotse (CutSet.from_jsonl_lazy), the floor for any lazy sampler
  open       the same file through nest_ssl's open_cutset (line-checked reader)
  bucketing  build_sampler: DynamicBucketingSampler, batch_duration=600 s, 30 buckets, shuffle, buffers 10k+10k
  fixed      build_sampler: DynamicCutSampler, batch_size=8 (NeMo's yaml), shuffle buffer 10k

For each: cuts per second, wall seconds, peak RSS (target < 1 GB) and its part above the `imports` phase (python +
torch + lhotse imported, nothing read: most of the RSS), and the ratio of cuts/s to the baseline measured in the
same run. Timings depend on the machine and its load; compare ratios, not absolute numbers.
"""

import argparse
import gzip
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time


def generate(path: str, num_cuts: int, seed: int = 0, max_duration: float = 30.0) -> None:
    """Lhotse MonoCut lines written directly as JSON (fast); each cut has its own 16 kHz recording."""
    rng = random.Random(seed)
    with gzip.open(path, "wt", compresslevel=1) as f:
        for i in range(num_cuts):
            # LibriLight windows after `cuts windows --max-duration MAX`: 85% U(5, MAX) s, 15% U(1, 5) s
            dur = round(rng.uniform(5.0, max_duration) if rng.random() < 0.85 else rng.uniform(1.0, 5.0), 3)
            rid = f"spk{i % 7439:04d}/book{i % 997:03d}/rec{i:07d}"
            n = int(round(dur * 16000))
            cut = {
                "id": rid,
                "start": 0.0,
                "duration": dur,
                "channel": 0,
                "recording": {
                    "id": rid,
                    "sources": [{"type": "file", "channels": [0], "source": f"/data/librilight/{rid}.flac"}],
                    "sampling_rate": 16000,
                    "num_samples": n,
                    "duration": dur,
                    "channel_ids": [0],
                },
                "type": "MonoCut",
            }
            f.write(json.dumps(cut) + "\n")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_phase(phase: str, manifest: str) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.disable(logging.WARNING)
    from lhotse import CutSet

    from nest_ssl.data.manifests import open_cutset, open_source
    from nest_ssl.data.sampler import build_sampler

    t0 = time.perf_counter()
    n_cuts = n_batches = 0
    audio_s = 0.0
    if phase == "imports":
        pass  # the memory floor: python + torch + lhotse + nest_ssl imported, nothing read
    elif phase == "baseline":
        for c in CutSet.from_jsonl_lazy(manifest):
            n_cuts += 1
            audio_s += c.duration
    elif phase == "open":
        for c in open_cutset(manifest):
            n_cuts += 1
            audio_s += c.duration
    else:
        if phase == "bucketing":
            cfg = dict(
                use_bucketing=True,
                batch_duration=600.0,
                num_buckets=30,
                shuffle=True,
                drop_last=True,
                bucket_buffer_size=10000,
                shuffle_buffer_size=10000,
                quadratic_duration=30.0,
            )
        else:
            cfg = dict(batch_size=8, shuffle=True, shuffle_buffer_size=10000, drop_last=True)
        sampler = build_sampler(open_source(manifest), cfg, seed=0)
        for batch in sampler:
            n_batches += 1
            for c in batch:
                n_cuts += 1
                audio_s += c.duration
    wall = time.perf_counter() - t0
    return {
        "phase": phase,
        "cuts": n_cuts,
        "batches": n_batches,
        "hours": audio_s / 3600,
        "wall_s": wall,
        "cuts_per_s": n_cuts / wall if n_cuts else 0.0,
        "peak_rss_mb": _peak_rss_mb(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-cuts", type=int, default=1_000_000)
    ap.add_argument("--keep", default=None, help="write the manifest here and keep it (default: a temp dir)")
    ap.add_argument("--phases", default="imports,baseline,open,bucketing,fixed")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.phase:
        print(json.dumps(run_phase(args.phase, args.manifest)))
        return 0

    tmp = None
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        manifest = os.path.join(args.keep, f"bench_cuts_{args.num_cuts}.jsonl.gz")
    else:
        tmp = tempfile.TemporaryDirectory(prefix="nest_bench_sampler_")
        manifest = os.path.join(tmp.name, "cuts.jsonl.gz")
    if not os.path.exists(manifest):
        t0 = time.perf_counter()
        generate(manifest, args.num_cuts)
        print(f"generated {args.num_cuts} cuts in {time.perf_counter() - t0:.1f} s "
              f"({os.path.getsize(manifest) / 2**20:.1f} MiB gz): {manifest}")

    results = {}
    for phase in args.phases.split(","):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--phase", phase, "--manifest", manifest],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(out.stderr, file=sys.stderr)
            return 1
        results[phase] = json.loads(out.stdout.strip().splitlines()[-1])

    base = results.get("baseline", {}).get("cuts_per_s")
    floor = results.get("imports", {}).get("peak_rss_mb", 0.0)
    print(
        f"{'phase':<10} {'cuts':>9} {'batches':>8} {'hours':>9} {'wall s':>8} {'cuts/s':>10} {'peak RSS MB':>12} "
        f"{'above imports':>14} {'vs baseline':>12}"
    )
    for r in results.values():
        ratio = f"{r['cuts_per_s'] / base:.2f}x" if base and r["cuts"] else "-"
        print(
            f"{r['phase']:<10} {r['cuts']:>9} {r['batches']:>8} {r['hours']:>9.1f} {r['wall_s']:>8.1f} "
            f"{r['cuts_per_s']:>10.0f} {r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] - floor:>14.0f} {ratio:>12}"
        )
    worst = max(r["peak_rss_mb"] for r in results.values())
    print(f"peak RSS target < 1024 MB: {'met' if worst < 1024 else 'NOT met'} (worst {worst:.0f} MB)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
