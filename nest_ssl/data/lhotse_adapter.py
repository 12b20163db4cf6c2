"""The one place that relies on Lhotse internals (samplers, the iterable wrapper, Shar reading); lhotse 1.33.0.

Everything here depends on something Lhotse does not promise: a private attribute, the layout of a sampler's
`state_dict()`, the moment a sampler reads a public attribute, or names we add to Lhotse's objects. Code elsewhere
in nest_ssl calls these functions instead, and tests/test_lhotse_adapter.py checks each assumption against the
installed Lhotse, so an upgrade that breaks one fails there, by name, rather than as a silently wrong resume.

Assumptions (lhotse.dataset.sampling.base.CutSampler and its Dynamic* subclasses):
* `_just_restored_state` is True between `load_state_dict()` (which fast-forwards) and the first `next()`, and
  makes the next `iter()` keep the restored position instead of starting the epoch over.
* `state_dict()["diagnostics"]` holds `current_epoch` and `stats_per_epoch[epoch]` with `kept_batches` and
  `discarded_batches`; `load_state_dict()` fast-forwards `kept + discarded` batches of that epoch.
* `iter(sampler)` reads `sampler.seed` (the batch RNG seed) at that moment, so setting it just before `iter()`
  reseeds one iteration.
* IterableDatasetWrapper has `_update_dataloading_info(cuts)` (sets each cut's rank/world size for the dataset).
* DynamicBucketingSampler.state_dict() refuses a sampler with a `constraint` only because it does not save the
  constraint; with the constraint rebuilt from the same config before load_state_dict(), the state is complete
  (the constraint keeps no state between batches: each batch starts from a fresh copy).
* The attribute names in NEST_SAMPLER_ATTRIBUTES / NEST_WRAPPER_ATTRIBUTES are not used by Lhotse itself.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

from lhotse.shar.utils import fill_shar_placeholder

__all__ = [
    "NEST_SAMPLER_ATTRIBUTES",
    "NEST_WRAPPER_ATTRIBUTES",
    "add_nest_attributes",
    "bucketing_state_dict",
    "fill_shar_placeholder",
    "just_restored",
    "map_style_sampler_of",
    "mark_shard_origin",
    "rewind_sampler_state",
    "sampler_of",
    "set_iteration_seed",
    "update_dataloading_info",
]

# What nest_ssl adds to Lhotse sampler objects (nest_ssl.data.sampler) and to IterableDatasetWrapper
# (nest_ssl.data.ResumableIterable): a name Lhotse starts using would silently change either.
NEST_SAMPLER_ATTRIBUTES = ("source", "iterable_dataset", "worker_init_fn", "_epoch_counts", "_share_reported")
NEST_WRAPPER_ATTRIBUTES = ("resume", "_stream", "_count", "_window", "_in_window", "_note_window", "_batches")


def just_restored(sampler: Any) -> bool:
    """Whether the sampler was just restored by `load_state_dict()` (its next iter() continues mid-epoch)."""
    return bool(sampler._just_restored_state)


def set_iteration_seed(sampler: Any, seed: int) -> None:
    """The batch RNG seed of the sampler's next `iter()` (Lhotse reads `sampler.seed` there). Not for a sampler
    whose state_dict is saved: `load_state_dict()` asserts the seed it was built with."""
    sampler.seed = seed


def add_nest_attributes(sampler: Any, *, source: Any, iterable: bool, worker_init_fn: Optional[Callable]) -> None:
    """The attributes nest_ssl.data.build_sampler promises on the sampler it returns (NEST_SAMPLER_ATTRIBUTES)."""
    sampler.source = source
    sampler.iterable_dataset = iterable
    sampler.worker_init_fn = worker_init_fn


def bucketing_state_dict(sampler: Any, state_dict: Callable[[], dict]) -> dict:
    """`state_dict()` of a DynamicBucketingSampler that may have a constraint (per-bucket batch sizes): Lhotse's
    assert on the constraint is stepped round by hiding it for the call; the caller rebuilds it on resume."""
    constraint = sampler.constraint
    sampler.constraint = None
    try:
        return state_dict()
    finally:
        sampler.constraint = constraint


def sampler_of(loader: Any) -> Any:
    """The Lhotse sampler behind a DataLoader (nest_ssl.data's `cut_sampler`, or `.sampler` / `.batch_sampler`):
    the first with `state_dict` and `load_state_dict`; None if there is none."""
    for attr in ("cut_sampler", "sampler", "batch_sampler"):
        s = getattr(loader, attr, None)
        if s is not None and hasattr(s, "state_dict") and hasattr(s, "load_state_dict"):
            return s
    return None


def map_style_sampler_of(loader: Any) -> Any:
    """`sampler_of(loader)`, or None when it is an iterable-mode sampler (`iterable_dataset`): that one runs inside
    the DataLoader workers, so its state in the training process says nothing about the stream."""
    s = sampler_of(loader)
    return None if getattr(s, "iterable_dataset", False) else s


def rewind_sampler_state(state: dict, consumed: int) -> dict:
    """The sampler state as of `consumed` batches into its current epoch.

    The DataLoader (and the trainer's one-batch lookahead) draws batches from the sampler before training on them,
    so the sampler's own count is ahead of the training loop. Lhotse's fast-forward replays `kept + discarded`
    batches of the current epoch; setting that sum to the number of batches actually trained on resumes exactly
    after them. A state without those diagnostics is returned unchanged (a copy).
    """
    state = copy.deepcopy(state)
    diag = state.get("diagnostics")
    if not isinstance(diag, dict):
        return state
    epoch = diag.get("current_epoch")
    stats = diag.get("stats_per_epoch", {}).get(epoch)
    if stats is None:
        return state
    stats["kept_batches"] = max(0, consumed - stats.get("discarded_batches", 0))
    return state


def update_dataloading_info(wrapper: Any, cuts: Any) -> None:
    """What IterableDatasetWrapper.__next__ does to a sampled batch before the dataset sees it."""
    wrapper._update_dataloading_info(cuts)


def mark_shard_origin(cut: Any, path: str) -> None:
    """The fields Lhotse's LazySharIterator sets on a cut read from a shard once (`shard_origin`, `shar_epoch`)."""
    cut.shard_origin = path
    cut.shar_epoch = 0
