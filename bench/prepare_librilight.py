#!/usr/bin/env python3
"""Benchmark: our LibriLight stage 1 (nest_ssl.prepare.librilight) against lhotse.recipes.librilight.

Both prepare the same generated tree (LibriLight layout over small/ medium/ large/, speech-like FLAC with a
LibriLight JSON beside each file), at two corpus sizes ten times apart, with the same numbers of jobs, in one
run. Each preparation runs in a fresh Python process; we report

  files/s   files prepared per second of the preparation call (imports excluded: the same for both); each
            runs --repeat times, interleaved with the other, and the fastest run counts (the machine is shared)
  peak MiB  the peak of the summed anonymous PSS (Pss_Anon + Pss_Shmem: heap and arrays; PSS so that pages
            forked workers share are counted once; not library code, whose PSS moves with whatever else runs
            on the machine) of the process and all its children, sampled every 20 ms; and its growth above
            the same process just before the call (the interpreter, torch and lhotse imported). A peak must
            be seen by two samples in a row, which filters the millisecond double counting of a worker's start

Targets: ours at least as fast as lhotse's with the same number of jobs; our peak memory flat across sizes.
The default sizes are big enough for ours to use its worker pool at both (it prepares a subset of at most
2 x jobs chunks of 64 files in-process), so that the memory comparison is like for like. The generated trees stay
in --work-dir for the next run (about 0.2 GB per 1000 files).

  python bench/prepare_librilight.py [--sizes 1000,10000] [--jobs 1,2] [--work-dir bench/out]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "local"))

CHILD = r"""
import json, os, sys, time
which, corpus, out, nj = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if which == "lhotse":
    from lhotse.recipes.librilight import prepare_librilight
    run = lambda: prepare_librilight(corpus, out, num_jobs=nj)
else:
    from nest_ssl.prepare.librilight import prepare_librilight
    check = which.split(":")[1] if ":" in which else "tail"
    run = lambda: prepare_librilight(corpus, out, subsets=("small", "medium", "large"), num_jobs=nj,
                                     check_audio=check)
import lhotse, torch  # both sides pay these imports before the clock starts
sys.stdout.write("READY\n"); sys.stdout.flush()
sys.stdin.readline()  # the parent has measured the baseline memory
t = time.perf_counter()
run()
sys.stdout.write(json.dumps({"seconds": time.perf_counter() - t}) + "\n")
"""


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except OSError:
        pass
    return out


def _pss_kib(pid):
    """Proportional anonymous + shmem memory: the process's own data, with pages it shares with forked workers
    counted once overall. Library code (file-backed) is left out: its PSS moves whenever other programs on
    the machine map the same libraries, which would drown the signal."""
    total = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                    total += int(line.split()[1])
    except OSError:
        pass
    return total


def tree_pss_mib(root):
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _pss_kib(pid)
        stack.extend(_children(pid))
    return total / 1024


def run_one(which, corpus, out, nj):
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-c", CHILD, which, corpus, out, str(nj)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert p.stdout.readline().strip() == "READY"
    base = tree_pss_mib(p.pid)
    peak = [base]
    stop = threading.Event()

    def sample():
        # A value counts when two samples in a row (20 ms apart) reach it. A single sample can be inflated: while
        # a pool starts a worker (fork, then exec) the parent may be read before the fork and the child, still
        # sharing the parent's pages, after it, which counts those pages up to twice for a millisecond.
        prev = base
        while not stop.is_set():
            now = tree_pss_mib(p.pid)
            peak[0] = max(peak[0], min(prev, now))
            prev = now
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    p.stdin.write("\n")
    p.stdin.flush()
    line = p.stdout.readline()
    p.wait()
    stop.set()
    th.join()
    if p.returncode != 0 or not line:
        raise RuntimeError(f"{which} failed (exit {p.returncode})")
    return json.loads(line)["seconds"], base, peak[0]


def make_tree(path, files, seed=0):
    """LibriLight layout over the three subsets (lhotse's recipe always walks all three)."""
    from make_mini_corpus import make_corpus

    stamp = os.path.join(path, f".complete-{files}-{seed}")
    if os.path.exists(stamp):
        return
    shutil.rmtree(path, ignore_errors=True)
    # speakers x 2 books x 5 files per subset; one 6-12 s clip per speaker, copied (each file has its own JSON)
    speakers = max(1, round(files / 3 / 10))
    make_corpus(path, ("small", "medium", "large"), speakers=speakers, books=2, files=5, min_seconds=6,
                max_seconds=12, seed=seed, reuse_audio=True)
    open(stamp, "w").close()


def count_files(path):
    return sum(1 for _, _, fs in os.walk(path) for f in fs if f.endswith(".flac"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="two corpus sizes (files), ten times apart")
    ap.add_argument("--jobs", default="1,2", help="numbers of jobs to compare at")
    ap.add_argument("--work-dir", default=os.path.join(REPO, "bench", "out"))
    ap.add_argument("--header-only", action="store_true", help="also run ours with check_audio=header (lhotse's check)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts (the machine is shared)")
    a = ap.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",")]
    jobs = [int(j) for j in a.jobs.split(",")]
    os.makedirs(a.work_dir, exist_ok=True)
    ours = ["nest_ssl"] + (["nest_ssl:header"] if a.header_only else [])
    rows = []
    for size in sizes:
        corpus = os.path.join(a.work_dir, f"librilight_{size}")
        t = time.time()
        make_tree(corpus, size)
        n = count_files(corpus)
        print(f"corpus {corpus}: {n} files (generated in {time.time() - t:.0f} s)", flush=True)
        for nj in jobs:
            runs = {which: [] for which in ["lhotse"] + ours}
            for _ in range(a.repeat):  # interleaved, so that a burst of load elsewhere hits both sides
                for which in runs:
                    runs[which].append(run_one(which, corpus, os.path.join(a.work_dir, "manifests"), nj))
            for which, results in runs.items():
                secs = min(r[0] for r in results)
                base = min(r[1] for r in results)
                peak = max(r[2] for r in results)
                rows.append(dict(files=n, jobs=nj, impl=which, fps=n / secs, secs=secs, base=base, peak=peak))
                print(f"  {which:<16} jobs={nj}  {n / secs:8.1f} files/s  (best of {len(results)}: {secs:6.2f} s; "
                      f"all: {' '.join(f'{r[0]:.2f}' for r in results)})  peak {peak:7.1f} MiB "
                      f"(+{peak - base:6.1f} over the process before the call)", flush=True)
    shutil.rmtree(os.path.join(a.work_dir, "manifests"), ignore_errors=True)

    print("\nspeed (ours / lhotse, same jobs, same corpus):")
    for size in sorted({r["files"] for r in rows}):
        for nj in jobs:
            base = next(r for r in rows if r["files"] == size and r["jobs"] == nj and r["impl"] == "lhotse")
            for impl in ours:
                r = next(r for r in rows if r["files"] == size and r["jobs"] == nj and r["impl"] == impl)
                print(f"  {size:6d} files, jobs={nj}: {impl} {r['fps']:.1f} files/s vs lhotse {base['fps']:.1f} "
                      f"files/s -> x{r['fps'] / base['fps']:.2f}")
    small, big = min(r["files"] for r in rows), max(r["files"] for r in rows)
    print(f"\npeak memory growth from {small} to {big} files (peak MiB at the larger size minus at the smaller):")
    for impl in ["lhotse"] + ours:
        for nj in jobs:
            lo = next(r for r in rows if r["files"] == small and r["jobs"] == nj and r["impl"] == impl)
            hi = next(r for r in rows if r["files"] == big and r["jobs"] == nj and r["impl"] == impl)
            print(f"  {impl:<16} jobs={nj}: {lo['peak']:7.1f} -> {hi['peak']:7.1f} MiB ({hi['peak'] - lo['peak']:+6.1f}); "
                  f"growth over the pre-call process {lo['peak'] - lo['base']:+6.1f} -> {hi['peak'] - hi['base']:+6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
