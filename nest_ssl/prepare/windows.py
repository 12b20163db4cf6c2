"""Training windows: long recordings -> cuts between min_duration and max_duration seconds, lazily.

Two regimes, chosen per input cut:

* the cut has supervisions (LibriLight VAD segments): neighbouring segments are merged greedily while the pause
  between them is shorter than `max_pause` and the merged span stays within `max_duration`; a span still longer
  than `max_duration` (one very long segment, or overlapping ones) is split into equal ("balanced") pieces; spans
  shorter than `min_duration` are dropped. Audio outside the merged spans (long silences) is not used.
* no supervisions: the whole cut is split into the fewest equal pieces no longer than `max_duration`, so there is no
  short leftover at the end (a 65 s recording with max 30 s gives 3 x 21.67 s rather than 30 + 30 + 5).

Window ids are deterministic: `<source cut id>_<start ms>-<end ms>` (times relative to the source cut), and a cut
that already fits is passed through unchanged. Input and output are lazy: one source cut is in memory at a time.
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, List, Optional, Tuple

from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.lazy import Dillable
from lhotse.utils import fastcopy

from nest_ssl.data.manifests import ManifestError

Span = Tuple[float, float]

DEFAULT_MAX_PAUSE = 1.0
# Above this many supervisions per cut an interval tree makes the per-window supervision lookup O(log n).
_INDEX_THRESHOLD = 16


def _snap(t: float, sampling_rate: Optional[int]) -> float:
    """Round a time to the sample grid so window boundaries and durations stay exact for lhotse."""
    if not sampling_rate:
        return round(t, 6)
    return round(t * sampling_rate) / sampling_rate


def merge_supervision_spans(
    spans: Iterable[Span], *, max_pause: float, max_duration: float
) -> List[Span]:
    """Greedy left-to-right merge of (start, end) spans (any order) across pauses shorter than `max_pause`.

    A span is merged into the current group when the gap to it is < max_pause and the merged group stays within
    max_duration; overlapping spans are always merged (the result may then exceed max_duration and is split later).
    """
    groups: List[Span] = []
    cur: Optional[List[float]] = None
    for s, e in sorted(spans):
        if e <= s:
            continue
        if cur is None:
            cur = [s, e]
            continue
        gap = s - cur[1]
        if gap <= 0 or (gap < max_pause and max(e, cur[1]) - cur[0] <= max_duration):
            cur[1] = max(cur[1], e)
        else:
            groups.append((cur[0], cur[1]))
            cur = [s, e]
    if cur is not None:
        groups.append((cur[0], cur[1]))
    return groups


def balanced_split(start: float, end: float, *, min_duration: float, max_duration: float) -> List[Span]:
    """Split [start, end) into the fewest equal pieces <= max_duration; drop what is shorter than min_duration.

    Equal pieces are >= max_duration / 2 long, so they only fall below min_duration when min_duration is more than
    half of max_duration; then we cut max_duration pieces and drop a short remainder instead.
    """
    length = end - start
    if length < min_duration or length <= 0:
        return []
    if length <= max_duration:
        return [(start, end)]
    n = math.ceil(length / max_duration - 1e-9)
    piece = length / n
    if piece >= min_duration:
        bounds = [start + length * i / n for i in range(n)] + [end]
        return [(bounds[i], bounds[i + 1]) for i in range(n)]
    out: List[Span] = []
    t = start
    while end - t >= min_duration:
        out.append((t, min(end, t + max_duration)))
        t += max_duration
    return out


def window_spans(
    cut: Cut,
    *,
    min_duration: float,
    max_duration: float,
    max_pause: float = DEFAULT_MAX_PAUSE,
    use_supervisions: bool = True,
) -> List[Span]:
    """The (start, end) windows, relative to the cut's start, that `make_training_windows` makes of one cut."""
    sr = getattr(cut, "sampling_rate", None) if cut.has_recording else None
    if use_supervisions and cut.supervisions:
        spans = [(max(0.0, s.start), min(cut.duration, s.end)) for s in cut.supervisions]
        groups = merge_supervision_spans(spans, max_pause=max_pause, max_duration=max_duration)
    else:
        groups = [(0.0, cut.duration)]
    out: List[Span] = []
    for s, e in groups:
        for a, b in balanced_split(s, e, min_duration=min_duration, max_duration=max_duration):
            a, b = _snap(a, sr), _snap(b, sr)
            if b - a > 0 and b - a >= min_duration - 1e-6:
                out.append((a, b))
    return out


def _ms(t: float) -> str:
    return f"{int(round(t * 1000)):08d}"


def cut_training_windows(
    cut: Cut,
    *,
    min_duration: float,
    max_duration: float,
    max_pause: float = DEFAULT_MAX_PAUSE,
    use_supervisions: bool = True,
) -> List[Cut]:
    """The training windows of one cut (see the module docstring)."""
    spans = window_spans(
        cut, min_duration=min_duration, max_duration=max_duration, max_pause=max_pause, use_supervisions=use_supervisions
    )
    if len(spans) == 1 and spans[0][0] <= 1e-6 and abs(spans[0][1] - cut.duration) <= 1e-6:
        return [cut]
    index = None
    if len(cut.supervisions) > _INDEX_THRESHOLD:
        index = cut.index_supervisions()
    out = []
    for a, b in spans:
        piece = cut.truncate(
            offset=a,
            duration=b - a,
            keep_excessive_supervisions=False,  # a window keeps only the VAD segments that lie inside it
            preserve_id=True,
            _supervisions_index=index,
        )
        out.append(fastcopy(piece, id=f"{cut.id}_{_ms(a)}-{_ms(b)}"))
    return out


class LazyTrainingWindows(Dillable):
    """Lazy iterable of training windows over a (lazy) iterable of cuts; raises if nothing survives a full pass."""

    def __init__(
        self,
        cuts: Iterable[Cut],
        *,
        min_duration: float,
        max_duration: float,
        max_pause: float = DEFAULT_MAX_PAUSE,
        use_supervisions: bool = True,
        what: str = "training windows",
    ) -> None:
        self.cuts = cuts
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.max_pause = max_pause
        self.use_supervisions = use_supervisions
        self.what = what

    def __iter__(self) -> Iterator[Cut]:
        n_in = n_out = 0
        longest = 0.0
        for cut in self.cuts:
            n_in += 1
            longest = max(longest, cut.duration)
            for w in cut_training_windows(
                cut,
                min_duration=self.min_duration,
                max_duration=self.max_duration,
                max_pause=self.max_pause,
                use_supervisions=self.use_supervisions,
            ):
                n_out += 1
                yield w
        if n_in and not n_out:
            raise ManifestError(
                f"{self.what}: min_duration={self.min_duration} s removed every window of all {n_in} input cuts "
                f"(longest input cut {longest:.2f} s; with VAD supervisions the merged speech spans are shorter); "
                "lower min_duration, raise max_pause, or check the input"
            )

    def __add__(self, other):
        from lhotse.lazy import LazyIteratorChain

        return LazyIteratorChain(self, other)


def make_training_windows(
    cuts: Iterable[Cut],
    min_duration: float,
    max_duration: float,
    max_pause: float = DEFAULT_MAX_PAUSE,
    *,
    use_supervisions: bool = True,
    what: str = "training windows",
) -> CutSet:
    """Lazy CutSet of training windows between min_duration and max_duration seconds (see the module docstring).

    cuts: any iterable of cuts (typically a lazy CutSet from open_cutset). Iterating the result re-iterates it.
    max_pause: VAD segments separated by a pause shorter than this (seconds) are merged into one window.
    use_supervisions: False ignores supervisions and always cuts balanced fixed windows.
    """
    if not (0 < min_duration <= max_duration):
        raise ValueError(
            f"need 0 < min_duration <= max_duration, got min_duration={min_duration}, max_duration={max_duration}"
        )
    if max_pause < 0:
        raise ValueError(f"max_pause must be >= 0, got {max_pause}")
    return CutSet(
        LazyTrainingWindows(
            cuts,
            min_duration=min_duration,
            max_duration=max_duration,
            max_pause=max_pause,
            use_supervisions=use_supervisions,
            what=what,
        )
    )
