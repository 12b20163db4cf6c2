"""Bucket bins from a uniform random sample of a whole manifest (`nest-ssl cuts estimate-bins`): offline, one pass
over the manifest lines, memory for the sample only, no audio read. The sampler's own estimate at start reads only
the head of the stream (nest_ssl.data.bucketing)."""

from __future__ import annotations

import random
from typing import Iterable, List, Optional, Tuple, Union

from lhotse.cut import Cut

from nest_ssl.data.bucketing import bins_from_durations
from nest_ssl.data.manifests import ManifestError, ManifestSource


def sample_durations(
    cuts: Union[ManifestSource, Iterable[Cut]],
    num_cuts: int,
    *,
    seed: int = 0,
    min_duration: Optional[float] = None,
    max_duration: Optional[float] = None,
    max_cuts_read: Optional[int] = None,
) -> Tuple[List[float], int, bool]:
    """A uniform random sample of at most `num_cuts` durations from `cuts` (those within [min_duration,
    max_duration]), in one pass with memory for `num_cuts` floats: reservoir sampling (Vitter's algorithm R),
    seeded. For a ManifestSource (nest_ssl.data.manifests.open_source) only the manifest lines are read
    (ManifestSource.iter_durations); other iterables are read cut by cut.

    max_cuts_read: stop after reading that many cuts (None: the whole input).
    Returns (sample, number of cuts that passed the duration filter, whether the whole input was read).
    """
    durations: Iterable[float] = (
        cuts.iter_durations() if isinstance(cuts, ManifestSource) else (c.duration for c in cuts)
    )
    rng = random.Random(seed)
    sample: List[float] = []
    seen = 0
    exhausted = True
    for n_read, d in enumerate(durations):
        if max_cuts_read is not None and n_read >= max_cuts_read:
            exhausted = False
            break
        if (min_duration is not None and d < min_duration) or (max_duration is not None and d > max_duration):
            continue
        if seen < num_cuts:
            sample.append(d)
        else:
            # The (seen+1)-th kept cut replaces a random sample element with probability num_cuts / (seen+1),
            # which keeps every cut read so far in the sample with the same probability.
            j = rng.randint(0, seen)
            if j < num_cuts:
                sample[j] = d
        seen += 1
    return sample, seen, exhausted


def estimate_bucket_bins(
    cuts: Union[ManifestSource, Iterable[Cut]],
    num_buckets: int,
    *,
    num_cuts: int = 10000,
    min_duration: Optional[float] = None,
    max_duration: Optional[float] = None,
    what: str = "cuts",
    seed: int = 0,
    max_cuts_read: Optional[int] = None,
) -> List[float]:
    """`num_buckets - 1` duration boundaries giving buckets of roughly equal total duration (Lhotse's
    estimate_duration_buckets), estimated from a uniform random sample of `num_cuts` cuts of the whole input
    (within [min_duration, max_duration] when given; see sample_durations). A sample of the whole input, not its
    first cuts, so a manifest sorted by duration (or by speaker, book, ...) gives the right bins.

    max_cuts_read: read only the first that many cuts (the sample is then of those only).
    """
    if num_buckets < 2:
        raise ManifestError(f"{what}: num_buckets must be >= 2 to estimate bucket bins (got {num_buckets})")
    if num_cuts < 1:
        raise ManifestError(f"{what}: the number of cuts to estimate bucket bins from must be >= 1 (got {num_cuts})")
    sample, _, _ = sample_durations(
        cuts, num_cuts, seed=seed, min_duration=min_duration, max_duration=max_duration, max_cuts_read=max_cuts_read
    )
    return bins_from_durations(sample, num_buckets, what=what)
