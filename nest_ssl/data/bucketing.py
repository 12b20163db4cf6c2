"""Duration buckets for Lhotse's DynamicBucketingSampler: bin boundaries from a sample of durations, and the bins
the sampler estimates at start when a config gives none (from the head of the stream, as NeMo does).

A sample of the whole manifest (reservoir sampling, `nest-ssl cuts estimate-bins`) is offline work: see
nest_ssl.prepare.bucket_bins.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable, List, Tuple

from lhotse.cut import Cut
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

from nest_ssl.data.manifests import ManifestError


class _AsIs:
    """Lhotse's estimate_duration_buckets measures each item with `constraint.measure_length`; our items are
    already durations."""

    @staticmethod
    def measure_length(duration: float) -> float:
        return duration


def bins_from_durations(sample: List[float], num_buckets: int, *, what: str = "cuts") -> List[float]:
    """Lhotse's equal-total-duration boundaries for a sample of durations, repeats removed."""
    if len(sample) < num_buckets:
        raise ManifestError(
            f"{what}: only {len(sample)} cuts to estimate {num_buckets} buckets from; use fewer buckets "
            "(num_buckets) or more data"
        )
    bins = estimate_duration_buckets(sample, num_buckets=num_buckets, constraint=_AsIs())
    # Equal-duration boundaries can repeat when many cuts share a length (fixed windows); lhotse needs them sorted
    # and repeats make empty buckets, so keep the distinct ones.
    out: List[float] = []
    for b in bins:
        b = round(float(b), 3)
        if not out or b > out[-1]:
            out.append(b)
    return out


def head_durations(cuts: Iterable[Cut], num_cuts: int) -> Tuple[List[float], bool]:
    """The durations of the first `num_cuts` cuts, and whether that was all of them."""
    durations = [c.duration for c in islice(cuts, num_cuts + 1)]
    return durations[:num_cuts], len(durations) <= num_cuts


def bins_from_head(cuts: Iterable[Cut], num_buckets: int, num_cuts: int, *, what: str) -> Tuple[List[float], bool]:
    """NeMo's meaning of `num_cuts_for_bins_estimate`: bins from the first `num_cuts` cuts of the (shuffled) stream.
    Returns (bins, whether every cut was read)."""
    durations, exhausted = head_durations(cuts, num_cuts)
    return bins_from_durations(durations, num_buckets, what=what), exhausted
