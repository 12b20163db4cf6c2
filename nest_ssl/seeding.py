"""Random streams: every seed nest-ssl derives, and RNG state capture/restore for checkpoints.

One base seed (the config's `seed`) feeds everything. Seeds are derived from it and from what they are for, never
from Python's `hash` (salted per process, so DataLoader workers and ranks would disagree) and never from a shared
stream (what one consumer drew would shift the next):

- `derive_seed(base, *parts)`: BLAKE2b-64 of the base and the parts (NUL-separated), 63 bits. The trainer's
  streams: `seed_for(base, purpose, index, rank)` reseeds Python, NumPy and torch before a batch is fetched and
  before it is trained on, from (seed, purpose, batch index, rank). What a step draws therefore depends only on
  which step it is, so a run restarted from a checkpoint draws exactly what the uninterrupted run drew, whatever
  the validation, prefetching or logging did in between.
- `hash_seed(*parts)`: BLAKE2b-64 of the parts (each followed by a unit separator), 63 bits. The data pipeline's:
  a batch's augmentation seed from (seed, epoch, its cut ids), a DataLoader worker's global seed. It is a second
  encoding only so that the data order and augmentation of existing runs stay what they were.
- `mix_seed(base, *parts)`: base and small integers (rank, worker, pass, epoch) mixed with an odd prime, 62 bits.
  The samplers' per-reader and per-pass shuffling seeds (cheap, and in existing runs' data order).
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


def hash_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (the data pipeline's encoding; see the module docstring)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode())
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little") >> 1


MIX_PRIME = 1_000_003  # odd, so that distinct small parts give distinct seeds


def mix_seed(base: int, *parts: int) -> int:
    """`((base * P + part1) * P + part2) ...` modulo 2**62: a seed per rank, worker, pass or epoch of a sampler."""
    s = int(base)
    for p in parts:
        s = s * MIX_PRIME + int(p)
    return s % (1 << 62)


def seed_all(seed: int) -> None:
    """Seeds Python, NumPy and torch (every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def seed_for(base: int, purpose: str, index: int, rank: int = 0) -> None:
    """Reseeds every generator for one batch of one purpose (PURPOSES) on one rank."""
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
