"""Iterable (Shar) training streams cut into windows of shards, so that a resume costs one window at most.

A (rank, worker) stream reads its shards in a seeded order per pass (see nest_ssl.data.sampler). That order is cut
into windows of `stream_window_shards` shards, and each window is sampled on its own: a fresh shuffle buffer and a
fresh Lhotse sampler iteration (buckets, batch RNG), seeded from (stream, pass, window). Batches never span two
windows, so the sampler state at a window's start is empty and a stream's position is (window k, batches b given
in it). Resuming at (k, b) computes window k's shards from the seeds alone (earlier windows are not opened),
replays the first b batches of window k from the cuts files only (no audio tar is read; the cuts go through the
same shuffle buffer and sampler, so the same batches come out), then reads on with audio; the cuts still buffered
at that point get their audio by cut id when they are batched (`nest_ssl.data.shar_stream.attach`). The replay is
bounded by one window's cuts, whatever the depth into the epoch.

The price of the windows: each window ends with whatever its buffers hold, i.e. one partial batch
(DynamicCutSampler) or up to one per bucket (bucketing); and the shuffle mixes cuts within a window, not across
windows (Shar shards are shuffled globally when written, so this loses little).
`stream_window_shards: 0` makes a whole pass one window (no partial batches inside a pass; a resume then replays
up to a pass).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import islice
from typing import Dict, Iterator, List, Optional

from lhotse.cut import Cut
from lhotse.utils import streaming_shuffle

from nest_ssl.data.shar_stream import ShardHandle, iter_shard

__all__ = ["DEFAULT_WINDOW_SHARDS", "FilterCounts", "StreamWindow", "WindowedStream"]

# Shards per window: with 1000-cut shards (`nest-ssl shar export`'s default) a window holds 8000 cuts, well above
# the iterable defaults for the shuffle (1000) and bucket (2000) buffers; a resume replays at most that many cuts'
# metadata.
DEFAULT_WINDOW_SHARDS = 8

_MIX = 1_000_003


@dataclass
class FilterCounts:
    """Cuts seen and kept by the duration filter over a pass, and the range of those removed."""

    n_in: int = 0
    n_out: int = 0
    seconds: float = 0.0  # of the kept cuts
    shortest: float = float("inf")
    longest: float = 0.0


@dataclass(frozen=True)
class StreamWindow:
    """Window `index` of a stream: window `number` of `count` in pass `pass_index`, its parts in reading order."""

    index: int
    pass_index: int
    number: int
    count: int
    parts: Optional[list]  # None: the source has no parts (a plain CutSet): the window is the whole pass
    first_part: int
    parts_in_pass: int
    pass_seed: int

    @property
    def last_in_pass(self) -> bool:
        return self.number == self.count - 1

    def seed(self, salt: int) -> int:
        return ((self.pass_seed * _MIX + self.number) * _MIX + salt) % (1 << 31)

    def describe(self) -> str:
        if self.parts is None:
            return f"pass {self.pass_index}"
        if not self.parts:
            return f"pass {self.pass_index}, no shards"
        return (f"pass {self.pass_index}, shards {self.first_part + 1}-{self.first_part + len(self.parts)} of "
                f"{self.parts_in_pass} in its order")


class WindowedStream:
    """The iterable-mode half of SamplerSource: which window the stream is in, and the cuts of that window.

    The sampler (nest_ssl.data.sampler._NestSamplerMixin) calls `start()` at iter(), iterates the source (the
    cuts of the current window), and `advance()` when the window's batches are exhausted. While `metadata_only`
    is set, Shar cuts come without their data and are listed in `pending` (cut id -> shard) for `attach`.
    """

    window_shards: int
    # Where `start()` puts the stream (a resumed stream's window), then reset to None.
    resume_window: Optional[int]

    def _init_stream(self, window_shards: Optional[int]) -> None:
        self.window_shards = DEFAULT_WINDOW_SHARDS if window_shards is None else int(window_shards)
        self.resume_window = None
        self.metadata_only = False
        self.pending: Dict[str, ShardHandle] = {}
        self.cuts_read = 0  # cuts read from the files since start()
        self.window: Optional[StreamWindow] = None
        self._base = 0
        self._split = None
        self._pass_counts: Optional[FilterCounts] = None
        self._pass_cache: Optional[tuple] = None

    # -- positions ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """At the sampler's iter(): fix the seeds and go to window 0, or to `resume_window`."""
        self._base = self._stream_base_seed()
        self._split = None if self.infinite else self._reader()
        k = self.resume_window or 0
        self.resume_window = None
        self.cuts_read = 0
        self.pending.clear()
        self.window = self.window_at(k)
        # A pass seen from its first window can tell that it held no cut at all (then the stream ends).
        self._pass_counts = FilterCounts() if self.window is not None and self.window.number == 0 else None

    def advance(self) -> bool:
        """Go to the next window; False when there is none (end of a one-pass epoch, or a pass without cuts)."""
        if self.window is None:
            return False
        if self.window.last_in_pass and self._pass_counts is not None and self._pass_counts.n_in == 0:
            return False  # nothing to repeat
        nxt = self.window_at(self.window.index + 1)
        self.window = nxt
        self.pending.clear()  # cuts of the previous window never batched are not coming back
        if nxt is None:
            return False
        if nxt.number == 0:
            self._pass_counts = FilterCounts()
        return True

    def _pass_parts(self, pass_index: int) -> tuple:
        """(parts of the pass in reading order or None, the pass seed); the last pass asked for is kept."""
        key = (self._base, self._split, self.epoch, self.exclude_parts, pass_index)
        if self._pass_cache is None or self._pass_cache[0] != key:
            self._pass_cache = (key, self._compute_pass_parts(pass_index))
        parts, seed = self._pass_cache[1]
        return (None if parts is None else list(parts)), seed

    def _manifest(self):
        """The ManifestSource the stream reads (passed explicitly to the sampler), or None for a plain CutSet."""
        from nest_ssl.data.manifests import ManifestSource

        return self.cuts if isinstance(self.cuts, ManifestSource) else None

    def _compute_pass_parts(self, pass_index: int) -> tuple:
        seed = self._pass_seed(self._base, self.epoch if self._split is not None else pass_index)
        src = self._manifest()
        if src is None:
            return None, seed
        parts = self._share_parts(src, self._split) if self._split is not None else list(src.parts)
        if self.shuffle_parts and len(parts) > 1:
            random.Random(seed).shuffle(parts)  # as ManifestSource.iter_parts(seed)
        return parts, seed

    def _parts_per_pass(self) -> Optional[int]:
        """How many parts each pass reads (the same set every pass, reshuffled); None: no parts."""
        src = self._manifest()
        if src is None:
            return None
        return len(self._share_parts(src, self._split)) if self._split is not None else len(src.parts)

    def window_at(self, index: int) -> Optional[StreamWindow]:
        """Window `index` of this stream from the seeds alone (no file is read); None past a one-pass epoch."""
        n = self._parts_per_pass()
        per_pass = 1 if (n is None or self.window_shards <= 0) else max(1, math.ceil(n / self.window_shards))
        pass_index, number = divmod(index, per_pass)
        if self._split is not None and pass_index > 0:
            return None
        parts, seed = self._pass_parts(pass_index)
        if parts is None:
            return StreamWindow(index, pass_index, 0, 1, None, 0, 0, seed)
        size = n if self.window_shards <= 0 else self.window_shards
        first = number * size
        return StreamWindow(index, pass_index, number, per_pass, parts[first:first + size], first, n, seed)

    # -- cuts -----------------------------------------------------------------------------------------------------
    def iter_window(self) -> Iterator[Cut]:
        w = self.window
        if w is None:
            return
        counts = self._pass_counts if self._pass_counts is not None else FilterCounts()
        it = self._window_cuts(w)
        if self.shuffle_buffer_size:
            it = streaming_shuffle(it, bufsize=self.shuffle_buffer_size, rng=random.Random(w.seed(1)))
        yield from self._duration_filter(it, counts)
        if w.last_in_pass and self._pass_counts is not None:
            self._check_filtered(self._pass_counts, self._split)

    def _window_cuts(self, w: StreamWindow) -> Iterator[Cut]:
        from nest_ssl.data.manifests import ManifestSource

        if w.parts is None:
            it = iter(self.cuts)
            if self._split is not None:
                # No parts to split: every reader walks the same (deterministic) stream and keeps its stride.
                rank, world_size, worker, num_workers = self._split
                it = islice(islice(it, rank, None, world_size), worker, None, num_workers)
            for cut in it:
                self.cuts_read += 1
                yield cut
            return
        for part in w.parts:
            if part.kind == "shar":
                cuts = iter_shard(part, with_data=lambda: not self.metadata_only, on_skipped=self._skipped)
            else:
                cuts = ManifestSource([part], what=self.what, sample_rate=self.cuts_sample_rate()).iter_parts()
            for cut in cuts:
                self.cuts_read += 1
                yield cut

    def _skipped(self, cut: Cut, handle: ShardHandle) -> None:
        self.pending[cut.id] = handle

    def cuts_sample_rate(self) -> int:
        src = self._manifest()
        return src.sample_rate if src is not None else 16000

    def drop_pending(self, cuts: List[Cut]) -> None:
        """Cuts batched during a replay need no data: forget them."""
        for cut in cuts:
            self.pending.pop(cut.id, None)
