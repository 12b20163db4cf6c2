#!/usr/bin/env python3
"""SIGTERM soak: trains the default 17-layer model (recipes/nest/train.py, nest_fast-conformer) on the CPU with
batch 2 and about an hour of validation audio, sends SIGTERM once global step N (default 3) is logged, and reports
per try the exit code, whether a checkpoint was written after the signal, and the seconds from the signal to it.

    python bench/sigterm_soak.py --tries 20                       # data: make_dummy_data.py, 1100 val utterances
    python bench/sigterm_soak.py --tries 3 --heap-check           # glibc's malloc checks (libc_malloc_debug.so)
    python bench/sigterm_soak.py --tries 5 -- nest_trainer.num_threads=2   # extra train.py overrides after --

It runs the real command (whatever the trainer does on SIGTERM: validate then save, or save `last` first); one try
at a time. The process is killed (SIGKILL) only if it outlives --timeout after the signal. Exit code 134 (SIGABRT)
or a negative one (killed by a signal) is the failure this soak looks for; the process's stderr tail is printed
for those. OMP_NUM_THREADS defaults to 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MALLOC_DEBUG = "/usr/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"
# How a signalled run may end: 75 (EXIT_RESUMABLE, "stopped, continue me"), or 0 from a trainer that predates it.
STOPPED = (0, 75)


def _make_data(out: Path, num_val: int) -> None:
    if (out / "val_manifest.json").exists() and (out / "train_manifest.json").exists():
        return
    subprocess.run([sys.executable, str(REPO / "recipes/nest/make_dummy_data.py"), "--out-dir", str(out),
                    "--num-train", "48", "--num-val", str(num_val)], check=True)


def _logged_step(run_dir: Path) -> int:
    """The highest global_step in any metrics.jsonl under run_dir (0 before the first logged step)."""
    best = 0
    for f in glob.glob(str(run_dir / "**" / "metrics.jsonl"), recursive=True):
        try:
            lines = Path(f).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                best = max(best, int(json.loads(line).get("global_step") or 0))
            except (ValueError, AttributeError):
                continue  # a line being written
    return best


def _checkpoints(run_dir: Path) -> list[Path]:
    return [Path(p) for p in glob.glob(str(run_dir / "**" / "*.ckpt"), recursive=True)]


def one_try(i: int, args, data: Path, extra: list[str], env: dict) -> dict:
    run_dir = Path(args.out_dir) / f"try{i:03d}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cmd = [sys.executable, str(REPO / "recipes/nest/train.py"),
           f"model.train_ds.manifest_filepath={data / 'train_manifest.json'}",
           f"model.validation_ds.manifest_filepath={data / 'val_manifest.json'}",
           "model.train_ds.batch_size=2", "model.validation_ds.batch_size=2",
           "trainer.devices=1", "trainer.strategy=auto", "trainer.max_steps=1000",
           "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
           # a checkpoint schedule the preflight accepts (NEST's val_check_interval 2500 never comes in 24-batch
           # epochs); the soak's checkpoint is the one the signal makes
           "++exp_manager.checkpoint_callback_params.every_n_train_steps=500",
           f"exp_manager.exp_dir={run_dir}", *extra]
    log = open(run_dir / "train.log", "wb")
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
    sig_at = None
    while proc.poll() is None:
        if sig_at is None and _logged_step(run_dir) >= args.after_step:
            proc.send_signal(signal.SIGTERM)
            sig_at = time.time()
        if sig_at is not None and time.time() - sig_at > args.timeout:
            proc.kill()
        if sig_at is None and time.time() - t0 > args.timeout:
            proc.kill()
        time.sleep(0.2)
    log.close()
    rc = proc.returncode
    after = [p for p in _checkpoints(run_dir) if sig_at is not None and p.stat().st_mtime >= sig_at]
    first = min((p.stat().st_mtime for p in after), default=None)
    last = [p for p in after if p.name.endswith("last.ckpt")]
    row = {"try": i, "rc": rc, "signalled": sig_at is not None,
           "step_at_signal": None, "checkpoint": bool(after), "last_ckpt": bool(last),
           "s_to_first_ckpt": None if first is None else round(first - sig_at, 1),
           "s_to_exit": None if sig_at is None else round(time.time() - sig_at, 1),
           "s_total": round(time.time() - t0, 1)}
    if sig_at is not None:
        row["step_at_signal"] = args.after_step
    if rc not in STOPPED:
        tail = (run_dir / "train.log").read_bytes()[-1500:].decode(errors="replace")
        row["log_tail"] = tail
    if not args.keep and rc in STOPPED:
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tries", type=int, default=20)
    p.add_argument("--after-step", type=int, default=3, help="SIGTERM once this global step is logged (default 3)")
    p.add_argument("--data", default=None, help="folder with {train,val}_manifest.json (default: OUT/data, made "
                   "with make_dummy_data.py --num-val VAL)")
    p.add_argument("--num-val", type=int, default=1100, help="validation utterances, 1.5-5 s each (default 1100: "
                   "about an hour)")
    p.add_argument("--out-dir", default="/tmp/nest_sigterm_soak", help="run folders and data (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a hung try is killed")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS (default 2)")
    p.add_argument("--heap-check", action="store_true",
                   help="preload glibc's libc_malloc_debug.so with glibc.malloc.check=3 and MALLOC_PERTURB_")
    p.add_argument("--keep", action="store_true", help="keep the run folders of clean tries too")
    args = p.parse_args(argv)
    data = Path(args.data) if args.data else Path(args.out_dir) / "data"
    _make_data(data, args.num_val)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.heap_check:
        env.update(LD_PRELOAD=MALLOC_DEBUG, GLIBC_TUNABLES="glibc.malloc.check=3", MALLOC_PERTURB_="165")
    rows = []
    for i in range(args.tries):
        row = one_try(i, args, data, extra, env)
        rows.append(row)
        tail = row.pop("log_tail", None)
        print(json.dumps(row), flush=True)
        if tail:
            print("   log tail: " + tail.replace("\n", "\n   "), flush=True)
    ok = [r for r in rows if r["rc"] in STOPPED and r["last_ckpt"]]
    crashed = [r for r in rows if r["rc"] not in (0, None) and (r["rc"] < 0 or r["rc"] >= 128)]
    secs = sorted(r["s_to_first_ckpt"] for r in rows if r["s_to_first_ckpt"] is not None)
    print(json.dumps({"tries": len(rows), "clean_with_last_ckpt": len(ok), "crashed": len(crashed),
                      "exit_codes": sorted({r["rc"] for r in rows}),
                      "s_signal_to_ckpt_min_median_max": [secs[0], secs[len(secs) // 2], secs[-1]] if secs else None}))
    return 0 if len(ok) == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
