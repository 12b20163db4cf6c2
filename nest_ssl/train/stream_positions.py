"""Where each iterable (Shar) training stream stands, for an exact resume (nest_ssl.data.ResumableIterable).

Each DataLoader worker of each rank plays its own stream and tags every batch with its position (`batch.stream`).
`StreamPositions` keeps those of the batches actually trained on (not the prefetched ones) in the current epoch;
the checkpoint holds one per rank (`to_checkpoint`), and `resume_streams` turns a rank's saved entry back into the
`resume` request of the dataset, or, on another topology, into the fallback its docstring describes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from nest_ssl.seeding import derive_seed

log = logging.getLogger("nest_ssl.train")


@dataclass
class StreamPositions:
    """This rank's streams after the batches trained on in the current epoch."""

    batches: dict[int, int] = field(default_factory=dict)  # worker stream -> batches it gave (from its start)
    windows: dict[int, list[int]] = field(default_factory=dict)  # worker stream -> [window, batches in it]
    last: Optional[int] = None  # the stream of the last batch trained on (the next batch comes from the next one)
    parts: set[str] = field(default_factory=set)  # the shards / manifest files the trained batches came from

    def note(self, stream: dict) -> None:
        """A batch with this `batch.stream` tag is trained on: its stream stands after it."""
        worker = int(stream["worker"])
        self.batches[worker] = int(stream["batches"])
        if stream.get("window") is not None:
            self.windows[worker] = [int(stream["window"]), int(stream["in_window"])]
        self.last = worker
        self.parts.update(stream.get("parts") or ())

    def to_checkpoint(self, num_workers: int) -> dict:
        return {"num_workers": num_workers, "positions": dict(self.batches), "windows": dict(self.windows),
                "last": self.last, "parts": sorted(self.parts)}

    @classmethod
    def from_checkpoint(cls, saved: dict) -> "StreamPositions":
        return cls(batches={int(k): int(v) for k, v in (saved.get("positions") or {}).items()},
                   windows={int(k): [int(v[0]), int(v[1])] for k, v in (saved.get("windows") or {}).items()},
                   last=saved.get("last"), parts=set(saved.get("parts") or []))

    def resume_request(self, num_workers: int) -> dict:
        """ResumableIterable.resume: worker i plays stream (i + offset) % num_workers, so the round-robin goes on
        with the stream after the last one trained on."""
        offset = 0 if self.last is None else (int(self.last) + 1) % num_workers
        return {"offset": offset, "skip": dict(self.batches), "at": dict(self.windows)}


def _source_of(streams: Any) -> Any:
    return getattr(getattr(streams, "sampler", None), "source", None)


def streams_end(streams: Any) -> bool:
    """Whether the iterable input ends (a one-pass epoch, force_finite): then ranks can run out at different
    batches. An infinite stream never ends."""
    return not bool(getattr(_source_of(streams), "infinite", False))


def resume_streams(streams: Any, saved: Optional[list], saved_ws: int, *, rank: int, world_size: int,
                   num_workers: int, epoch: int, global_step: int, num_parts: int) -> StreamPositions:
    """Iterable input: every (rank, worker) stream continues after the last batch it gave that was trained on
    (same world size and workers: sets `streams.resume`); on another topology a one-pass epoch (force_finite)
    splits the shards not read yet among the new readers, an infinite stream starts a new order.

    streams: the ResumableIterable; saved: the checkpoint's per-rank `to_checkpoint()` entries (or None);
    num_parts: the shards / files of the source (for the message). Returns this rank's positions from here on."""
    source = _source_of(streams)
    nw = num_workers
    mine = saved[rank] if saved and saved_ws == world_size else None
    if mine is not None and int(mine["num_workers"]) == nw:
        positions = StreamPositions.from_checkpoint(mine)
        request = positions.resume_request(nw)
        streams.resume = request
        log.info("iterable training data: resuming each of the %d worker stream(s) of rank %d after the batches "
                 "trained before the checkpoint (%s); the next batch comes from stream %d", nw, rank,
                 ", ".join(f"stream {w}: {n}" for w, n in sorted(positions.batches.items())) or "none yet",
                 request["offset"])
        return positions
    was = (f"{saved_ws} process(es) x {saved[0]['num_workers']} worker(s)" if saved else
           f"{saved_ws} process(es), without stream positions")
    now = f"{world_size} process(es) x {nw} worker(s)"
    if source is not None and not source.infinite and saved:
        read = frozenset(p for r in saved for p in (r.get("parts") or []))
        source.exclude_parts = read
        log.warning(
            "the checkpoint was written by %s, this run has %s: the streams cannot continue as they were. "
            "Epoch %d goes on without the %d shard(s) its trained batches came from (none is read twice; their "
            "cuts not trained yet are left for the next epoch) and the %d reader(s) split the %d other shard(s)",
            was, now, epoch, len(read), world_size * nw, max(0, num_parts - len(read)))
        return StreamPositions(parts=set(read))
    if source is not None:
        source.seed = derive_seed(source.seed, "resume", global_step) % (1 << 31)
        log.warning("the checkpoint was written by %s, this run has %s: the infinite streams start over in a "
                    "new order (data seed %d) instead of replaying what was trained", was, now, source.seed)
    return StreamPositions()


def end_of_epoch(streams: Any) -> StreamPositions:
    """The next epoch's streams start afresh: no position, and no shard left out of a one-pass split."""
    source = _source_of(streams)
    if source is not None:
        source.exclude_parts = None
    return StreamPositions()
