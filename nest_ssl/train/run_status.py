"""How a run ended, written into its run folder for whoever cannot see the training processes' exit status.

torchrun reports any non-zero exit of a worker as a failure of its own (exit 1, with a ChildFailedError report), so
a recipe or job script behind torchrun cannot tell "stopped, continue me" (EXIT_RESUMABLE) from a crash by
torchrun's status. Global rank 0 therefore writes `<run folder>/train_status.json` when a run ends without an error,
before the other ranks leave (they wait at the final barrier), and removes it when a run starts: a file present was
written by the run that ran last, and a run that crashed or was killed leaves none.

    {"status": "finished" | "resumable", "stop_reason": "max_steps" | "max_epochs" | "preempted" |
     "max_time_per_run", "exit_code": 0 | 75, "global_step": N, "epoch": E}

local/summary.py (`train-status RUN_DIR`, standard library only) reads it for the recipes' stage 6.
"""

from __future__ import annotations

import json
from pathlib import Path

from nest_ssl.checkpoint import atomic_write
from nest_ssl.train.exit_codes import EXIT_RESUMABLE

STATUS_FILE = "train_status.json"
# Stops after which the same command continues the run (its last checkpoint was written): the exit status is
# EXIT_RESUMABLE, and the recipes do not mark the training stage done.
RESUMABLE_STOPS = ("preempted", "max_time_per_run")


def exit_code_for(stop_reason: str | None) -> int:
    """The exit status of a run that ended without an error: EXIT_RESUMABLE after a stop that leaves work to do."""
    return EXIT_RESUMABLE if stop_reason in RESUMABLE_STOPS else 0


def status_record(stop_reason: str | None, global_step: int, epoch: int) -> dict:
    code = exit_code_for(stop_reason)
    return {"status": "resumable" if code == EXIT_RESUMABLE else "finished", "stop_reason": stop_reason,
            "exit_code": code, "global_step": int(global_step), "epoch": int(epoch)}


def write_status(log_dir: str | Path, stop_reason: str | None, global_step: int, epoch: int) -> Path:
    record = status_record(stop_reason, global_step, epoch)
    text = json.dumps(record, indent=1) + "\n"
    return atomic_write(Path(log_dir) / STATUS_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def clear_status(log_dir: str | Path) -> None:
    (Path(log_dir) / STATUS_FILE).unlink(missing_ok=True)


def read_status(log_dir: str | Path) -> dict | None:
    """The record of the run that ended last in `log_dir`, or None (none ended without an error since it started,
    or the file is unreadable)."""
    try:
        record = json.loads((Path(log_dir) / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
