"""Cuts the loader dropped (unreadable, NaN/Inf, empty audio) are listed, with the reason, in the run folder:
rejected_cuts.tsv for rank 0, rejected_cuts.rank<r>.tsv for the others (each rank reads its own cuts). Columns:
global step, purpose (train / val / sanity), cut id, reason on one line. Training goes on without them."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Tuple


class RejectedCutsLog:
    """This rank's list of rejected cuts, appended to as batches report them."""

    def __init__(self, log_dir: Path, rank: int) -> None:
        name = "rejected_cuts.tsv" if rank == 0 else f"rejected_cuts.rank{rank}.tsv"
        self.path = Path(log_dir) / name

    def record(self, rejected: Iterable[Tuple[str, str]], purpose: str, global_step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for cut_id, reason in rejected:
                reason = " ".join(str(reason).split())  # one line per cut, whatever the error text
                f.write(f"{global_step}\t{purpose}\t{cut_id}\t{reason}\n")
