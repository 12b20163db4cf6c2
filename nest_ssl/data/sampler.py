"""Batch sampling over lazy CutSets: Lhotse's dynamic samplers, configured with NeMo's dataloading keys.

`build_sampler(cuts, ds_cfg, seed=, rank=, world_size=, training=)` returns a Lhotse `CutSampler`:

* `use_bucketing: true`  -> `DynamicBucketingSampler` (buckets of similar duration; `bucket_duration_bins` given or
  estimated from the first `num_cuts_for_bins_estimate` cuts of the stream, as NeMo does; `nest-ssl cuts
  estimate-bins` precomputes them from a uniform sample of the whole manifest);
* otherwise              -> `DynamicCutSampler` (NeMo's choice when bucketing is off).

Batches hold `batch_duration` seconds of audio (padding included, `quadratic_duration` optional) and/or at most
`batch_size` cuts; with no `batch_duration` the batch size alone decides. Cuts outside [min_duration, max_duration]
are skipped, as in NeMo; when that leaves nothing a ManifestError says so.

Two modes, decided by `uses_iterable_dataset(cuts, ds_cfg, training)` and exposed as `sampler.iterable_dataset`:

map-style (default; lazy JSONL manifests, every validation set):
    the sampler lives in the training process. With `rank`/`world_size` it draws `world_size` batches per step and
    keeps the `rank`-th, so ranks get disjoint batches and the same number of steps. Everything random is a
    function of (seed, epoch) only: the order of manifest files, the streaming shuffle of cuts (`shuffle_buffer_size`)
    and Lhotse's bucket choice. So `sampler.state_dict()` saved mid-epoch and loaded into a freshly built sampler
    (same data, config, seed, world_size) continues with exactly the batches the uninterrupted run would have
    produced (Lhotse's fast-forward replays the consumed batches' metadata; no audio is read).

iterable (Shar input, or `force_iterable_dataset: true`; training only):
    the dataloader owner wraps the sampler in `lhotse.dataset.IterableDatasetWrapper`, so each DataLoader worker
    runs its own copy. As Lhotse recommends for large sharded data, the sampler itself has rank=0, world_size=1 and
    de-duplication comes from the data order: every (rank, worker) reads the shards (Shar shards or manifest files)
    in its own shuffled order, seeded from `shard_seed` (default "randomized": derived from `seed`, the rank and the
    worker id, so a run is reproducible; "trng": OS entropy; an int: that base) and reshuffled on every pass; the
    stream is infinite and training is counted in steps. Each (rank, worker) stream is a deterministic function of
    (seed, epoch, rank, stream worker), sampled in windows of `stream_window_shards` shards (fresh buffers per
    window; nest_ssl.data.stream_state), so the trainer resumes it exactly at a cost bounded by one window:
    nest_ssl.data.ResumableIterable tags every batch with its stream position (window, batches in it), the
    checkpoint keeps those of the trained batches, and a resumed worker jumps to its window without opening earlier
    shards and replays that window from the cuts files only (`SamplerSource.stream_worker` lets the DataLoader's
    workers play rotated streams so the round-robin order continues). `sampler.worker_init_fn` is the Lhotse
    worker_init_fn to give the DataLoader (per-worker RNG seeds).

    `force_finite: true` makes it one pass that covers every cut exactly once across all ranks and workers (Lhotse's
    `split_for_dataloading` idea): the parts (Shar shards or manifest files) are put in an order common to every
    reader (from `seed`/int `shard_seed` and the epoch), and (rank, worker) reads `parts[rank::world_size]
    [worker::num_workers]`, in its own shuffled order. With fewer parts than readers some readers get nothing;
    shares differ in size, so in DDP ranks can get different numbers of batches (the trainer must tolerate an
    uneven end, or use the infinite stream).
"""

from __future__ import annotations

import logging
import random
import secrets
from itertools import islice
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
from lhotse.dataset.sampling.base import CutSampler
from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets
from lhotse.lazy import Dillable
from lhotse.utils import streaming_shuffle

from nest_ssl.data.manifests import ManifestError, ManifestSource, manifest_source
from nest_ssl.data.stream_state import FilterCounts, WindowedStream

log = logging.getLogger(__name__)

# Defaults for keys a user's config may leave out (NeMo's train_ds yaml has none of the Lhotse keys).
# NeMo's LhotseDataLoadingConfig values, except: concurrent_bucketing False (a background thread makes sampling
# non-deterministic, which breaks exact resume) and shard_seed "randomized" (reproducible; NeMo uses "trng").
SAMPLER_DEFAULTS: Dict[str, Any] = {
    "batch_size": None,
    "batch_duration": None,
    "quadratic_duration": None,
    "use_bucketing": False,
    "num_buckets": 30,
    "bucket_duration_bins": None,
    "num_cuts_for_bins_estimate": 10000,
    "bucket_buffer_size": 10000,
    "shuffle_buffer_size": 10000,
    "concurrent_bucketing": False,
    "sync_buckets": True,
    "shuffle": None,  # None -> `training`
    "drop_last": False,
    "seed": None,  # None -> the `seed` argument
    "shard_seed": "randomized",
    "min_duration": None,
    "max_duration": None,
    "force_finite": False,
    "force_map_dataset": False,
    "force_iterable_dataset": False,
    "stream_window_shards": None,  # None -> stream_state.DEFAULT_WINDOW_SHARDS
}

# Iterable (Shar) mode: a cut read from a Shar shard carries its encoded audio, so every buffered cut costs ~17 kB per
# second of audio (~0.3 MB for a 17 s LibriLight window) in each DataLoader worker, and NeMo's 10000 + 10000 would
# hold ~5 GB per worker. Shards are globally shuffled when written (`nest-ssl shar export`), so a small shuffle
# buffer suffices, and 2000 cuts still fill 30 buckets for batches of ~1000 s of 17 s cuts.
ITERABLE_DEFAULTS: Dict[str, Any] = {"bucket_buffer_size": 2000, "shuffle_buffer_size": 1000}

# NeMo dataloading keys we know but do not implement (warned about, not silently dropped).
_UNSUPPORTED_KEYS = {
    "bucket_batch_size": "per-bucket batch sizes need a custom constraint, which Lhotse cannot checkpoint; use "
    "batch_duration (+ quadratic_duration)",
    "bucketing_batch_size": "NeMo's non-Lhotse bucketing; use batch_duration with use_bucketing",
    "multi_config": "one input config per dataset section",
    "input_cfg": "give manifest_filepath (paths, comma-separated or a list)",
}

_MIX = 1_000_003  # an odd prime to combine seed, rank, worker and pass into one integer seed


def _raw_get(cfg: Any, key: str) -> Any:
    """cfg[key] or None, for DictConfig, dict or attribute objects."""
    if cfg is None:
        return None
    try:
        return cfg.get(key, None)
    except AttributeError:
        return getattr(cfg, key, None)


def _cfg_get(cfg: Any, key: str) -> Any:
    value = _raw_get(cfg, key)
    return SAMPLER_DEFAULTS[key] if value is None else value


def _as_float_list(value: Any, key: str) -> Optional[List[float]]:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    try:
        bins = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ManifestError(f"{key} must be a list of numbers (seconds), got {value!r}") from None
    if bins != sorted(bins) or len(set(bins)) != len(bins):
        raise ManifestError(f"{key} must be strictly increasing, got {bins}; re-run `nest-ssl cuts estimate-bins`")
    return bins


def uses_iterable_dataset(cuts: CutSet, ds_cfg: Any, training: bool = True) -> bool:
    """Whether the sampler for these cuts runs inside DataLoader workers (see the module docstring)."""
    if not training:
        # Validation must see every cut exactly once per rank split: map-style with rank/world_size does that.
        return False
    force_map = bool(_cfg_get(ds_cfg, "force_map_dataset"))
    force_iter = bool(_cfg_get(ds_cfg, "force_iterable_dataset"))
    if force_map and force_iter:
        raise ManifestError("force_map_dataset and force_iterable_dataset are both true; set at most one")
    if force_map:
        return False
    if force_iter:
        return True
    src = manifest_source(cuts)
    return bool(src is not None and src.is_shar)


class SamplerSource(WindowedStream, Dillable):
    """What the sampler iterates: the cuts in an order that depends only on (seed, epoch) or, in iterable mode,
    on (shard_seed, rank, DataLoader worker, pass); optionally streaming-shuffled; filtered by duration.
    In iterable mode one iteration gives the cuts of one window of shards (nest_ssl.data.stream_state)."""

    def __init__(
        self,
        cuts: Iterable[Cut],
        *,
        seed: int,
        shuffle_parts: bool,
        shuffle_buffer_size: Optional[int],
        min_duration: Optional[float],
        max_duration: Optional[float],
        iterable: bool = False,
        infinite: bool = False,
        shard_seed: Union[int, str] = "randomized",
        rank: int = 0,
        world_size: int = 1,
        what: str = "train_ds",
        window_shards: Optional[int] = None,
    ) -> None:
        self.cuts = cuts
        self.seed = int(seed)
        self.shuffle_parts = shuffle_parts
        self.shuffle_buffer_size = shuffle_buffer_size
        self.min_duration = min_duration
        self.max_duration = max_duration
        self.iterable = iterable
        self.infinite = infinite
        self.shard_seed = shard_seed
        self.rank = rank
        self.world_size = world_size
        self.what = what
        self.epoch = 0
        # Set by ResumableIterable in each DataLoader worker: the stream this worker plays (a resumed run rotates
        # them so the round-robin order of the DataLoader continues where it stopped); None: the worker id.
        self.stream_worker: Optional[int] = None
        # force_finite resumed on another topology: parts (paths) already read in this epoch, left out of the split.
        self.exclude_parts: Optional[frozenset] = None
        self._init_stream(window_shards)

    # -- seeds ---------------------------------------------------------------------------------------------------
    def _stream_base_seed(self) -> int:
        import torch.utils.data

        if self.shard_seed == "trng":
            base = secrets.randbits(62)
        elif self.shard_seed == "randomized":
            base = self.seed
        else:
            base = int(self.shard_seed)
        worker = self._reader()[2]
        return ((base * _MIX + self.rank) * _MIX + worker) % (1 << 62)

    def _pass_seed(self, base: int, pass_idx: int) -> int:
        return (base * _MIX + pass_idx) % (1 << 62)

    def _split_seed(self) -> int:
        # Must be equal on every rank and worker, or their shares would overlap: so never "trng" (per reader) and
        # never mixed with the rank or worker. `seed` is checked to be the same integer on every rank.
        base = self.shard_seed if isinstance(self.shard_seed, int) else self.seed
        return (int(base) * _MIX + self.epoch) % (1 << 62)

    def _reader(self) -> Tuple[int, int, int, int]:
        """(rank, world_size, worker, num_workers) of the process iterating now."""
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.stream_worker is not None:
            worker = self.stream_worker
        return self.rank, self.world_size, worker, num_workers

    # -- iteration -----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Cut]:
        # Seeds are fixed here, at iter() time, not at the generator's first next(): the sampler may change the
        # epoch between the two.
        if self.iterable:
            # The current window of the stream (start() fixed its seeds at the sampler's iter()).
            return self.iter_window()
        return self._iterate([self.seed + self.epoch], None)

    def _iterate(
        self, pass_seeds: Optional[List[int]], base: Optional[int], split: Optional[Tuple[int, int, int, int]] = None
    ) -> Iterator[Cut]:
        p = 0
        while True:
            if pass_seeds is not None:
                if p >= len(pass_seeds):
                    return
                s = pass_seeds[p]
            else:
                s = self._pass_seed(base, p)
            n = yield from self._one_pass(s, split)
            if n == 0:
                return  # nothing to repeat (and _one_pass has already raised if the filter removed everything)
            p += 1

    def _share_parts(self, src: ManifestSource, split: Tuple[int, int, int, int]) -> list:
        """The parts one reader of a one-pass epoch reads: Lhotse's split_by_worker(split_by_node(shards)), over an
        order shared by all readers that changes with the epoch (so a reader does not get the same shards every
        epoch), without the parts already read in this epoch by another topology (`exclude_parts`)."""
        rank, world_size, worker, num_workers = split
        parts = list(src.parts)
        if self.exclude_parts:
            parts = [p for p in parts if p.path not in self.exclude_parts]
        random.Random(self._split_seed()).shuffle(parts)
        return parts[rank::world_size][worker::num_workers]

    def _one_pass(self, pass_seed: int, split: Optional[Tuple[int, int, int, int]] = None):
        src = manifest_source(self.cuts) if isinstance(self.cuts, CutSet) else (
            self.cuts if isinstance(self.cuts, ManifestSource) else None
        )
        if split is not None:
            rank, world_size, worker, num_workers = split
        if src is not None:
            if split is not None:
                src = ManifestSource(self._share_parts(src, split), what=src.what, sample_rate=src.sample_rate)
            it: Iterator[Cut] = src.iter_parts(pass_seed if self.shuffle_parts else None)
        else:
            it = iter(self.cuts)
            if split is not None:
                # No parts to split: every reader walks the same (deterministic) stream and keeps its stride.
                it = islice(islice(it, rank, None, world_size), worker, None, num_workers)
        if self.shuffle_buffer_size:
            # A seed distinct from the part-order one, so the two shuffles are not correlated.
            it = streaming_shuffle(it, bufsize=self.shuffle_buffer_size, rng=random.Random(pass_seed * 2 + 1))
        counts = FilterCounts()
        yield from self._duration_filter(it, counts)
        self._check_filtered(counts, split)
        return counts.n_out

    def _duration_filter(self, it: Iterable[Cut], counts: "FilterCounts") -> Iterator[Cut]:
        lo, hi = self.min_duration, self.max_duration
        for cut in it:
            counts.n_in += 1
            d = cut.duration
            if (lo is not None and d < lo) or (hi is not None and d > hi):
                counts.shortest, counts.longest = min(counts.shortest, d), max(counts.longest, d)
                continue
            counts.n_out += 1
            yield cut

    def _check_filtered(self, counts: "FilterCounts", split: Optional[Tuple[int, int, int, int]]) -> None:
        """After a whole pass: warn (one reader's share) or raise when the duration filter removed every cut."""
        lo, hi = self.min_duration, self.max_duration
        if counts.n_in and not counts.n_out and split is not None:
            # Only this reader's share is known here; other readers may well have cuts in range.
            log.warning("%s: min_duration=%s / max_duration=%s removed all %d cuts of the share read by rank %d "
                        "worker %d", self.what, lo, hi, counts.n_in, split[0], split[2])
        elif counts.n_in and not counts.n_out:
            raise ManifestError(
                f"{self.what}: min_duration={lo} / max_duration={hi} removed all {counts.n_in} cuts (their durations "
                f"span {counts.shortest:.2f}-{counts.longest:.2f} s); lower {self.what}.min_duration or raise "
                f"{self.what}.max_duration, or cut long recordings into training windows with `nest-ssl cuts windows`"
            )

    def __add__(self, other):
        from lhotse.lazy import LazyIteratorChain

        return LazyIteratorChain(self, other)


class _NestSamplerMixin:
    """Keeps SamplerSource.epoch equal to the sampler's epoch, so a fresh sampler that loads a state_dict and
    fast-forwards sees the very same cut order as the original one."""

    source: SamplerSource
    iterable_dataset: bool = False
    worker_init_fn = None

    def __iter__(self):
        if not self._just_restored_state:
            self.source.epoch = self.epoch
        if self.source.iterable:
            self.source.start()
            self.seed = self.source.window.seed(2) if self.source.window is not None else self.seed
        return super().__iter__()

    def __next__(self):
        # Iterable mode: one Lhotse iteration per window of shards (fresh buffers and batch RNG), so that the
        # stream's state at a window's start is empty and a resume jumps there (nest_ssl.data.stream_state).
        while True:
            try:
                return super().__next__()
            except StopIteration:
                if not (self.source.iterable and self.source.advance()):
                    raise
                self.seed = self.source.window.seed(2)
                super().__iter__()


class NestBucketingSampler(_NestSamplerMixin, DynamicBucketingSampler):
    """DynamicBucketingSampler over a SamplerSource (see build_sampler)."""


class NestCutSampler(_NestSamplerMixin, DynamicCutSampler):
    """DynamicCutSampler over a SamplerSource (see build_sampler)."""


def _window_shards(ds_cfg: Any, what: str) -> Optional[int]:
    value = _raw_get(ds_cfg, "stream_window_shards")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"{what}.stream_window_shards must be a whole number of shards >= 0 (0: a whole pass), "
                            f"got {value!r}")
    return value


def _ds_name(cuts: CutSet, training: bool) -> str:
    src = manifest_source(cuts)
    if src is not None and "." in src.what:
        return src.what.split(".")[0]
    return "train_ds" if training else "validation_ds"


def build_sampler(
    cuts: CutSet,
    ds_cfg: Any,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    training: bool = True,
) -> CutSampler:
    """A Lhotse sampler for `cuts` (best: the CutSet returned by open_cutset) configured from a train_ds /
    validation_ds config (DictConfig, dict or None). See the module docstring for the keys and the two modes.

    seed: the run's seed, used unless ds_cfg sets `seed` itself; must be the same on every rank.
    rank, world_size: the DDP topology. Map-style samplers use them to hand out disjoint batches; in iterable mode
    they only seed the per-rank shard order (the sampler itself is rank 0 of 1).
    training: False = validation: no shuffling unless ds_cfg says so, always finite and map-style.

    The result has `iterable_dataset` (bool), `worker_init_fn` (for the DataLoader, None in map-style) and
    `source` (the SamplerSource) attributes, and Lhotse's `state_dict()` / `load_state_dict()`.
    """
    what = _ds_name(cuts, training)
    if _raw_get(ds_cfg, "is_tarred"):
        raise ManifestError(
            f"{what}.is_tarred: NeMo tarred datasets are not read by nest-ssl; point {what}.manifest_filepath at the "
            "manifest and convert it to Lhotse Shar with `nest-ssl shar export` (set is_tarred: false)"
        )
    for key, why in _UNSUPPORTED_KEYS.items():
        if _raw_get(ds_cfg, key) is not None:
            log.warning("%s.%s is not supported and is ignored: %s", what, key, why)
    if bool(_cfg_get(ds_cfg, "concurrent_bucketing")):
        log.warning("%s.concurrent_bucketing=true: batches are not reproducible, so a resumed run will not continue "
                    "with exactly the batches it would have seen", what)
    batch_size = _cfg_get(ds_cfg, "batch_size")
    batch_duration = _cfg_get(ds_cfg, "batch_duration")
    if batch_size is None and batch_duration is None:
        raise ManifestError(f"{what}: set {what}.batch_size (cuts per batch) or {what}.batch_duration (seconds per batch)")
    batch_size = int(batch_size) if batch_size is not None else None
    batch_duration = float(batch_duration) if batch_duration is not None else None
    if (batch_size is not None and batch_size <= 0) or (batch_duration is not None and batch_duration <= 0):
        raise ManifestError(f"{what}: batch_size and batch_duration must be positive (got {batch_size}, {batch_duration})")
    quadratic = _cfg_get(ds_cfg, "quadratic_duration")
    quadratic = float(quadratic) if quadratic is not None else None
    shuffle = _cfg_get(ds_cfg, "shuffle")
    shuffle = bool(training if shuffle is None else shuffle)
    drop_last = bool(_cfg_get(ds_cfg, "drop_last"))
    cfg_seed = _cfg_get(ds_cfg, "seed")
    base_seed = seed if cfg_seed is None else cfg_seed
    if isinstance(base_seed, bool) or not isinstance(base_seed, int):
        # "randomized"/"trng" would give each rank its own sampler order, and map-style DDP needs them identical.
        raise ManifestError(
            f"{what}.seed must be an integer (got {base_seed!r}); per-rank/worker randomness comes from "
            f"{what}.shard_seed"
        )
    shard_seed = _cfg_get(ds_cfg, "shard_seed")
    if not (isinstance(shard_seed, int) or shard_seed in ("randomized", "trng")):
        raise ManifestError(f"{what}.shard_seed must be an int, 'randomized' or 'trng' (got {shard_seed!r})")
    min_d, max_d = _cfg_get(ds_cfg, "min_duration"), _cfg_get(ds_cfg, "max_duration")
    min_d = float(min_d) if min_d is not None else None
    max_d = float(max_d) if max_d is not None else None
    if min_d is not None and max_d is not None and min_d > max_d:
        raise ManifestError(f"{what}: min_duration ({min_d}) is larger than max_duration ({max_d})")

    iterable = uses_iterable_dataset(cuts, ds_cfg, training)
    infinite = iterable and not bool(_cfg_get(ds_cfg, "force_finite"))
    use_bucketing = bool(_cfg_get(ds_cfg, "use_bucketing"))
    buffer_defaults = ITERABLE_DEFAULTS if iterable else SAMPLER_DEFAULTS

    def buffer_size(key: str) -> int:
        value = _raw_get(ds_cfg, key)
        return int(buffer_defaults[key] if value is None else value)

    shuffle_buffer = buffer_size("shuffle_buffer_size")

    if iterable:
        src = manifest_source(cuts)
        if src is None and infinite:
            log.warning(
                "%s: iterable mode over a CutSet that open_cutset did not return directly: shard order cannot be "
                "shuffled per rank/worker, so workers may read the same data",
                what,
            )
        elif src is None:
            log.warning(
                "%s: force_finite over a CutSet that open_cutset did not return directly: every rank and worker "
                "reads all of it and keeps every (world_size x num_workers)-th cut",
                what,
            )
        elif infinite and src.num_parts < 2:
            log.warning(
                "%s: iterable mode over a single manifest file: every rank and worker reads the same file "
                "(only the shuffle buffer differs); use a Shar directory or many manifest files",
                what,
            )
        elif not infinite and src.num_parts < world_size * max(1, int(_raw_get(ds_cfg, "num_workers") or 0)):
            log.warning(
                "%s: force_finite over %d part(s) for %d rank(s) x %s worker(s): each part is read by one of them "
                "only, so some get nothing; use more Shar shards (a smaller --shard-size) or manifest files",
                what, src.num_parts, world_size, _raw_get(ds_cfg, "num_workers") or 0,
            )
    source_kwargs = dict(
        seed=base_seed,
        # In iterable mode each rank/worker must read the shards in its own order, whatever `shuffle` says,
        # or they would all produce the same batches.
        shuffle_parts=shuffle or iterable,
        # DynamicCutSampler has its own (seed, epoch)-seeded shuffle buffer; the bucketing sampler has none
        # (it only shuffles within its buckets), so the source provides it.
        shuffle_buffer_size=shuffle_buffer if (shuffle and use_bucketing) else None,
        min_duration=min_d,
        max_duration=max_d,
        iterable=iterable,
        infinite=infinite,
        shard_seed=shard_seed,
        rank=rank,
        world_size=world_size,
        what=what,
    )
    source = SamplerSource(cuts, window_shards=_window_shards(ds_cfg, what), **source_kwargs)
    sampler_rank, sampler_world = (0, 1) if iterable else (rank, world_size)
    data = CutSet(source)
    if use_bucketing:
        bins = _as_float_list(_cfg_get(ds_cfg, "bucket_duration_bins"), f"{what}.bucket_duration_bins")
        num_buckets = int(_cfg_get(ds_cfg, "num_buckets"))
        if bins is None and num_buckets < 2:
            raise ManifestError(f"{what}.num_buckets must be >= 2 for bucketing (got {num_buckets})")
        if bins is None:
            src = manifest_source(cuts)
            estimate_from = data
            if src is not None and src.is_shar:
                # Durations are in the cuts files; reading the audio tars for them would be wasted I/O.
                stats_kwargs = dict(source_kwargs, iterable=False, infinite=False)
                estimate_from = CutSet(SamplerSource(CutSet(src.metadata_only()), **stats_kwargs))
            # NeMo's meaning of num_cuts_for_bins_estimate: the first N cuts of the (shuffled) stream. A uniform
            # sample would read the whole manifest at every start, on every rank (minutes for LibriLight), so
            # that is left to `nest-ssl cuts estimate-bins`; say so when the head was all we read.
            n_est = int(_cfg_get(ds_cfg, "num_cuts_for_bins_estimate"))
            sample, _, exhausted = sample_durations(estimate_from, n_est, max_cuts_read=n_est)
            bins = bins_from_durations(sample, num_buckets, what=what)
            if not exhausted:
                log.warning(
                    "%s: bucket_duration_bins estimated from the first %d cuts only (num_cuts_for_bins_estimate); "
                    "unless the manifest is shuffled they are skewed. Precompute them from a sample of the whole "
                    "manifest with `nest-ssl cuts estimate-bins` and set %s.bucket_duration_bins",
                    what, n_est, what,
                )
        sampler: CutSampler = NestBucketingSampler(
            data,
            max_duration=batch_duration,
            max_cuts=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            duration_bins=bins,
            buffer_size=buffer_size("bucket_buffer_size"),
            quadratic_duration=quadratic,
            world_size=sampler_world,
            rank=sampler_rank,
            seed=base_seed,
            sync_buckets=bool(_cfg_get(ds_cfg, "sync_buckets")),
            concurrent=bool(_cfg_get(ds_cfg, "concurrent_bucketing")),
        )
    else:
        sampler = NestCutSampler(
            data,
            max_duration=batch_duration,
            max_cuts=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            shuffle_buffer_size=max(1, shuffle_buffer),
            quadratic_duration=quadratic,
            world_size=sampler_world,
            rank=sampler_rank,
            seed=base_seed,
        )
    sampler.source = source
    sampler.iterable_dataset = iterable
    if iterable:
        from lhotse.dataset.dataloading import make_worker_init_fn

        sampler.worker_init_fn = make_worker_init_fn(rank=rank, world_size=world_size, seed=base_seed)
    log.info(
        "%s sampler: %s, %s, batch_size=%s batch_duration=%s shuffle=%s drop_last=%s rank=%d/%d",
        what,
        type(sampler).__name__,
        "iterable (per-worker, infinite)" if infinite else ("iterable (one pass, disjoint shares)" if iterable else "map-style"),
        batch_size,
        batch_duration,
        shuffle,
        drop_last,
        rank,
        world_size,
    )
    return sampler


class _AsIs:
    """Lhotse's estimate_duration_buckets measures each item with `constraint.measure_length`; our items are
    already durations."""

    @staticmethod
    def measure_length(duration: float) -> float:
        return duration


def sample_durations(
    cuts: Iterable[Cut],
    num_cuts: int,
    *,
    seed: int = 0,
    min_duration: Optional[float] = None,
    max_duration: Optional[float] = None,
    max_cuts_read: Optional[int] = None,
) -> Tuple[List[float], int, bool]:
    """A uniform random sample of at most `num_cuts` durations from `cuts` (those within [min_duration,
    max_duration]), in one pass with memory for `num_cuts` floats: reservoir sampling (Vitter's algorithm R),
    seeded. For a CutSet from open_cutset only the manifest lines are read (ManifestSource.iter_durations).

    max_cuts_read: stop after reading that many cuts (None: the whole input).
    Returns (sample, number of cuts that passed the duration filter, whether the whole input was read).
    """
    src = manifest_source(cuts) if isinstance(cuts, CutSet) else (cuts if isinstance(cuts, ManifestSource) else None)
    durations: Iterable[float] = src.iter_durations() if src is not None else (c.duration for c in cuts)
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
    cuts: Iterable[Cut],
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
