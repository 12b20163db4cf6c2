"""Averaging checkpoints (icefall's `--avg N`): the element-wise mean of floating-point tensors of N checkpoints;
integer tensors (counters, buffers) are taken from the last one."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from nest_ssl.asr.errors import ASRError


def average_state_dicts(states: Sequence[dict]) -> dict:
    if not states:
        raise ASRError("no checkpoint to average")
    keys = list(states[-1])
    for s in states:
        if list(s) != keys:
            raise ASRError("the checkpoints to average hold different tensors; average checkpoints of one run")
    out = {}
    for k in keys:
        if states[-1][k].is_floating_point():
            acc = torch.zeros_like(states[-1][k], dtype=torch.float64)
            for s in states:
                acc += s[k].to(torch.float64)
            out[k] = (acc / len(states)).to(states[-1][k].dtype)
        else:
            out[k] = states[-1][k].clone()
    return out


def last_checkpoints(folder: Path, n: int) -> list[Path]:
    """The last `n` step checkpoints of a fine-tuning run (`step-*.ckpt`, by step)."""
    found = sorted(folder.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
    if not found:
        raise ASRError(f"{folder}: holds no step-*.ckpt; give the --out-dir of `nest-ssl finetune` or a .ckpt")
    if n > len(found):
        raise ASRError(f"--avg {n}: {folder} holds only {len(found)} step checkpoints; use --avg {len(found)} or less")
    return found[-n:]
