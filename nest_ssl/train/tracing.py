"""Debugging aids for tests and bug hunts.

With NEST_SSL_TRACE_DIR=DIR set, every rank appends to DIR/rank<r>.jsonl one line per training batch (epoch, batch,
sample ids, loss) and one per optimizer step (a digest of the weights), so runs can be compared batch by batch (ranks
disjoint, resumes exact, DDP replicas equal).

With NEST_SSL_DEBUG_NONFINITE_GRAD=RANK:BATCH[,BATCH...] rank RANK's gradient is made NaN (after DDP's all-reduce) at
the optimizer steps that end with these training batches (counted from 1 in the run), to watch every rank skip them.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Iterable, Optional

import torch
from torch import nn

TRACE_ENV = "NEST_SSL_TRACE_DIR"
NONFINITE_GRAD_ENV = "NEST_SSL_DEBUG_NONFINITE_GRAD"


def nonfinite_grad_requested(rank: int, batch: int) -> bool:
    """Whether NEST_SSL_DEBUG_NONFINITE_GRAD asks for a NaN gradient on `rank` at the step ending with `batch`."""
    who, _, batches = os.environ.get(NONFINITE_GRAD_ENV, "").partition(":")
    return who == str(rank) and str(batch) in batches.split(",")


def weights_digest(model: nn.Module) -> str:
    """CRC32 over the names and bytes of the model's state_dict."""
    h = 0
    for name, t in model.state_dict().items():
        h = zlib.crc32(name.encode(), h)
        h = zlib.crc32(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()), h)
    return f"{h:08x}"


class StepTrace:
    """This rank's trace; does nothing (and computes nothing) unless the directory is set."""

    def __init__(self, rank: int, directory: Optional[str] = None) -> None:
        self.rank = rank
        self.directory = directory if directory is not None else os.environ.get(TRACE_ENV)

    @property
    def enabled(self) -> bool:
        return bool(self.directory)

    def batch(self, *, batch: int, epoch: int, sample_ids: Iterable[str], loss: torch.Tensor) -> None:
        if self.enabled:
            self.write({"batch": batch, "rank": self.rank, "epoch": epoch, "sample_ids": list(sample_ids),
                        "loss": float(loss.detach())})

    def step(self, *, step: int, model: nn.Module) -> None:
        if self.enabled:
            self.write({"step": step, "rank": self.rank, "weights": weights_digest(model)})

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        path = Path(self.directory) / f"rank{self.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
