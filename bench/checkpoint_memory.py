"""Host memory of each rank while a checkpoint is saved and while a run resumes from it (2 gloo ranks on the CPU).

    PYTHONPATH=. python bench/checkpoint_memory.py --config nest_large   # in the repository root, .venv's python

The ranks run `python -m nest_ssl.cli train`, so the code measured is the nest_ssl that PYTHONPATH (or the
installed package) gives, printed on the first line: point PYTHONPATH at another checkout to measure that one.

Two real `nest-ssl train` runs under torchrun (trainer.accelerator=cpu, strategy=ddp, gloo), on a few seconds of
dummy audio (recipes/nest/make_dummy_data.py):

1. save: `trainer.max_steps=STEPS` (Adam's state exists after the first step), then the checkpoint at the end of
   training (no .nemo, no validation). Every rank process is sampled from outside (/proc/PID/status every
   --interval seconds); the "save" window starts when rank 0 logs the last step and ends when the process exits.
2. resume: the same command again. The run finds its last checkpoint, every rank builds the model and restores
   weights, optimizer, scheduler and RNGs from it, sees max_steps reached and exits without a step, so the peak of
   this run is what resuming costs.

Printed per rank and phase: the peak of VmRSS (resident memory, file pages included), of RssAnon (memory the
process owns) and of RssFile (file pages it has mapped, e.g. a checkpoint loaded with mmap: the page cache holds
them once per node, whatever the number of ranks mapping them), sampled, and VmHWM, the kernel's exact peak of
VmRSS (reset when the save window begins); for the save window also the RSS when it began.
On the CPU a tensor's `.cpu()` is the tensor itself, so building a checkpoint copies nothing here; on a GPU every
rank that builds one holds a host copy of the weights and Adam's two moments (12 bytes per parameter).

The bench stops its runs (and says so) if the machine's MemAvailable falls under --min-available-gb, so that a
model too large for the machine does not push other work out of memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAKE_DATA = REPO / "recipes" / "nest" / "make_dummy_data.py"
FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def read_status(pid: int) -> dict[str, int] | None:
    """The memory fields of /proc/PID/status in bytes, or None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in FIELDS:
            out[key] = int(value.split()[0]) * 1024
    return out


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def rank_of(pid: int) -> int | None:
    """The RANK torchrun gave a process (None for the agent itself and anything else)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Sampler:
    """Samples every rank process of a torchrun agent until the agent exits; keeps per-rank peaks, overall and since
    `mark()` (with the RSS at the mark)."""

    def __init__(self, agent: subprocess.Popen, interval: float, min_available: int):
        self.agent, self.interval, self.min_available = agent, interval, min_available
        self.peak: dict[int, dict[str, int]] = {}
        self.since_mark: dict[int, dict[str, int]] | None = None
        self.at_mark: dict[int, int] = {}
        self.latest: dict[int, dict[str, int]] = {}
        self.killed_low_memory = False
        self._pids: dict[int, int] = {}  # pid -> rank
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def mark(self) -> None:
        with self._lock:
            self.since_mark = {}
            self.at_mark = {r: s["VmRSS"] for r, s in self.latest.items()}
            for pid in self._pids:
                try:  # resets VmHWM to the current RSS, so that it is the exact peak of the window from here on
                    Path(f"/proc/{pid}/clear_refs").write_text("5")
                except OSError:
                    pass

    def _run(self) -> None:
        while self.agent.poll() is None:
            for pid in children(self.agent.pid):
                if pid not in self._pids:
                    rank = rank_of(pid)
                    if rank is not None:
                        self._pids[pid] = rank
            with self._lock:
                for pid, rank in self._pids.items():
                    st = read_status(pid)
                    if not st or "RssAnon" not in st:
                        continue
                    self.latest[rank] = st
                    for table in (self.peak, self.since_mark):
                        if table is not None:
                            row = table.setdefault(rank, dict.fromkeys(FIELDS, 0))
                            for k, v in st.items():
                                row[k] = max(row[k], v)
            if mem_available() < self.min_available and not self.killed_low_memory:
                self.killed_low_memory = True
                os.killpg(self.agent.pid, 9)  # its own process group (start_new_session): the agent and its ranks
            time.sleep(self.interval)

    def join(self) -> None:
        self._thread.join()


def launch(args, workdir: Path, log_name: str, mark_on: str | None) -> tuple[Sampler, int, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.ranks}", f"--master-port={port}",
           "-m", "nest_ssl.cli", "train", "--config-name", args.config,
           "model.train_ds.manifest_filepath=data/dummy_ssl/train_manifest.json",
           "model.validation_ds.manifest_filepath=data/dummy_ssl/val_manifest.json",
           "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0",
           f"trainer.devices={args.ranks}", "trainer.accelerator=cpu", "trainer.strategy=ddp",
           f"trainer.max_steps={args.steps}", "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1",
           "trainer.check_val_every_n_epoch=null",
           "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
           "++exp_manager.checkpoint_callback_params.save_nemo_on_train_end=false", "exp_manager.exp_dir=exp"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    log_path = workdir / log_name
    with open(log_path, "w") as log:
        agent = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        sampler = Sampler(agent, args.interval, int(args.min_available_gb * 2**30))
        marked = False
        while agent.poll() is None:
            if mark_on and not marked and mark_on in log_path.read_text(errors="replace"):
                sampler.mark()
                marked = True
            time.sleep(args.interval)
        sampler.join()
    return sampler, agent.returncode, log_path.read_text(errors="replace")


def gb(n: int) -> str:
    return f"{n / 2**30:6.2f}"


def report(phase: str, table: dict[int, dict[str, int]], at_mark: dict[int, int] | None = None) -> None:
    for rank in sorted(table):
        row = table[rank]
        start = f"  RSS at start {gb(at_mark[rank])} GB" if at_mark and rank in at_mark else ""
        print(f"{phase:6s} rank {rank}: peak VmRSS {gb(row['VmRSS'])} GB  RssAnon {gb(row['RssAnon'])} GB  "
              f"RssFile {gb(row['RssFile'])} GB  VmHWM {gb(row['VmHWM'])} GB{start}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="nest_xlarge", help="model config name (nest_ssl/conf/*.yaml)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=1, help="optimizer steps before the checkpoint")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per rank")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between /proc samples")
    p.add_argument("--min-available-gb", type=float, default=1.5,
                   help="stop the runs when the machine's MemAvailable falls below this")
    p.add_argument("--work-dir", default=str(REPO / "bench" / "out" / "checkpoint_memory"))
    args = p.parse_args(argv)

    import nest_ssl

    workdir = Path(args.work_dir) / args.config
    shutil.rmtree(workdir / "exp", ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "data" / "dummy_ssl" / "train_manifest.json").exists():
        subprocess.run([sys.executable, str(MAKE_DATA), "--num-train", "16", "--num-val", "2",
                        "--min-seconds", "1.5", "--max-seconds", "2.5"], cwd=workdir, check=True,
                       capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"nest_ssl from {Path(nest_ssl.__file__).parent}; config {args.config}, {args.ranks} gloo ranks on the CPU, "
          f"{args.steps} step(s); MemAvailable {gb(mem_available())} GB")

    # rank 0's log line after the last optimizer step (log_every_n_steps=1): the save starts after it
    t0 = time.time()
    save, rc, out = launch(args, workdir, "save.log", mark_on=f"step {args.steps}:")
    if rc != 0 or save.killed_low_memory:
        why = "MemAvailable fell below --min-available-gb: the model does not fit" if save.killed_low_memory else \
            f"exit {rc}"
        print(f"save run failed ({why}); its log: {workdir / 'save.log'}\n{out[-3000:]}")
        return 1
    ckpts = sorted((workdir / "exp").rglob("*.ckpt"))
    size = max((c.stat().st_size for c in ckpts), default=0)
    print(f"save run: {time.time() - t0:.0f} s, checkpoint {gb(size)} GB ({len(ckpts)} file(s))")
    report("train", save.peak)
    if save.since_mark is None:
        print("(no step line seen in the log: the save window could not be told apart)")
    else:
        report("save", save.since_mark, save.at_mark)

    t0 = time.time()
    resume, rc, out = launch(args, workdir, "resume.log", mark_on=None)
    if rc != 0 or resume.killed_low_memory:
        why = "MemAvailable fell below --min-available-gb" if resume.killed_low_memory else f"exit {rc}"
        print(f"resume run failed ({why}); its log: {workdir / 'resume.log'}\n{out[-3000:]}")
        return 1
    if f"done: global step {args.steps}," not in out or f"step {args.steps}:" in out:
        print(f"warning: the second run did not just resume and stop; see {workdir / 'resume.log'}")
    print(f"resume run: {time.time() - t0:.0f} s")
    report("resume", resume.peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
