"""Finding the checkpoint a run resumes from: the newest intact, full one in its checkpoint folder.

Every kind counts: the last checkpoint (`*-last.ckpt`), the one it replaced (`*-last.ckpt.prev`), top-k ones and
those written at a time limit or signal. They are tried newest first (by modification time; os.replace keeps it,
so a `.prev` keeps the time it was written at), and one that cannot be read or fails its digest is skipped with the
reason, so a newest checkpoint damaged on disk or by a copy leaves the next newest to resume from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nest_ssl.checkpoint.format import PREV_SUFFIX, TMP_PREFIX, CheckpointError, is_resumable, load_checkpoint

log = logging.getLogger(__name__)

NEMO_UNFINISHED_SUFFIX = "-unfinished"  # NeMo marks a checkpoint being written with a `<ckpt>-unfinished` file


@dataclass
class Found:
    """The checkpoint to resume from (None when every candidate was skipped) and the skipped ones, with why."""

    path: Path | None
    ckpt: dict | None
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def cleanup_temporaries(ckpt_dir: Path) -> None:
    """Removes temporary files a killed writer left behind."""
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.glob(f"{TMP_PREFIX}*"):
        try:
            p.unlink()
        except OSError:
            pass


def _kind_rank(p: Path) -> int:
    """Order among files written at the same time: the last checkpoint, then its predecessor, then the others."""
    if p.name.endswith("last.ckpt"):
        return 0
    if p.name.endswith("last.ckpt" + PREV_SUFFIX):
        return 1
    return 2


def resume_candidates(ckpt_dir: Path) -> list[Path]:
    """Every checkpoint in ckpt_dir that a run could resume from, newest first, whatever its kind."""
    if not ckpt_dir.is_dir():
        return []
    files = [p for p in ckpt_dir.iterdir() if p.is_file() and not p.name.startswith(TMP_PREFIX)]
    unfinished = {p.name[: -len(NEMO_UNFINISHED_SUFFIX)] for p in files if p.name.endswith(NEMO_UNFINISHED_SUFFIX)}
    ckpts = [p for p in files if (p.name.endswith(".ckpt") or p.name.endswith(".ckpt" + PREV_SUFFIX))
             and p.name not in unfinished]
    return sorted(ckpts, key=lambda p: (-p.stat().st_mtime_ns, _kind_rank(p), p.name))


def find_resume_checkpoint(ckpt_dir: str | Path, map_location: Any = "cpu") -> Found | None:
    """The newest readable, intact, full checkpoint in ckpt_dir, with what was skipped before it (and why);
    None when the folder holds no checkpoint at all."""
    ckpt_dir = Path(ckpt_dir)
    skipped: list[tuple[Path, str]] = []
    for path in resume_candidates(ckpt_dir):
        try:
            ckpt = load_checkpoint(path, map_location=map_location)
        except (CheckpointError, OSError) as err:
            skipped.append((path, str(err)))
            continue
        if not is_resumable(ckpt):
            skipped.append((path, "weights only (no optimizer/loop state)"))
            continue
        return Found(path=path, ckpt=ckpt, skipped=skipped)
    if skipped:
        return Found(path=None, ckpt=None, skipped=skipped)
    return None
