"""Random streams: one base seed, per-step derived seeds, and RNG state capture/restore for checkpoints.

Exact resume does not rely on replaying a random stream from the start of training: before a batch is fetched
and before it is trained on, the Python, NumPy and torch generators are reseeded from (seed, purpose, batch index,
rank). What a step draws therefore depends only on which step it is, so a run restarted from a checkpoint draws
exactly what the uninterrupted run drew, whatever the validation, prefetching or logging did in between.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch

PURPOSES = {"init": 0, "data": 1, "step": 2, "val": 3, "sanity": 4}


def derive_seed(base: int, *parts: int | str) -> int:
    """A 63-bit seed from a base seed and any number of parts; independent streams for different parts."""
    h = hashlib.blake2b(digest_size=8)
    h.update(str(int(base)).encode())
    for p in parts:
        h.update(b"\x00" + str(p).encode())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def seed_all(seed: int) -> None:
    """Seeds Python, NumPy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def seed_for(base: int, purpose: str, index: int, rank: int = 0) -> None:
    seed_all(derive_seed(base, PURPOSES[purpose], index, rank))


def capture_rng_state() -> dict[str, Any]:
    """Every RNG state as plain types and tensors, so the checkpoint loads with torch.load(weights_only=True)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def set_deterministic(mode: bool | str, benchmark: bool | None) -> None:
    """Lightning's `deterministic` and `benchmark` flags."""
    if mode:
        # cuBLAS needs a fixed workspace to be deterministic; set it before any CUDA work.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=(mode == "warn"))
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if benchmark is not None:
        torch.backends.cudnn.benchmark = bool(benchmark) and not mode
