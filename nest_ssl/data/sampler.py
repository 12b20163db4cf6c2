"""Batch sampling over lazy CutSets: Lhotse's dynamic samplers, configured with NeMo's dataloading keys.

`build_sampler(source, ds_cfg, seed=, rank=, world_size=, training=)` returns a Lhotse `CutSampler` over `source`
(best: the ManifestSource of `nest_ssl.data.manifests.open_source`, whose parts the sampler orders and splits;
any iterable of cuts works too), configured by a `DataLoadingConfig` (nest_ssl.data.config):

* `use_bucketing: true`  -> `DynamicBucketingSampler` (buckets of similar duration; `bucket_duration_bins` given or
  estimated from the first `num_cuts_for_bins_estimate` cuts of the stream, as NeMo does (nest_ssl.data.bucketing);
  `nest-ssl cuts estimate-bins` precomputes them from a uniform sample of the whole manifest);
* otherwise              -> `DynamicCutSampler` (NeMo's choice when bucketing is off).

Batches hold `batch_duration` seconds of audio (padding included, `quadratic_duration` optional) and/or at most
`batch_size` cuts; with no `batch_duration` the batch size alone decides. Cuts outside [min_duration, max_duration]
are skipped, as in NeMo; when that leaves nothing a ManifestError says so.

Two modes, decided by `uses_iterable_dataset(source, ds_cfg, training)` and exposed as `sampler.iterable_dataset`:

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
from typing import Any, Iterable, Iterator, Optional, Tuple, Union

from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler
from lhotse.dataset.sampling.dynamic_bucketing import FixedBucketBatchSizeConstraint
from lhotse.dataset.sampling.base import CutSampler
from lhotse.lazy import Dillable
from lhotse.utils import streaming_shuffle

from nest_ssl.data.bucketing import bins_from_head
from nest_ssl.data.config import DataLoadingConfig, parse_data_config
from nest_ssl.data.lhotse_adapter import add_nest_attributes, bucketing_state_dict, just_restored, set_iteration_seed
from nest_ssl.data.manifests import ManifestError, ManifestSource
from nest_ssl.data.stream_state import FilterCounts, WindowedStream
from nest_ssl.seeding import mix_seed

log = logging.getLogger(__name__)

# An epoch that trains on less than this share of the cuts is reported (bucketing + drop_last on small data).
MIN_EPOCH_SHARE = 0.9


def uses_iterable_dataset(source: Any, cfg: DataLoadingConfig, training: bool = True) -> bool:
    """Whether the sampler for `source` runs inside DataLoader workers (see the module docstring)."""
    if not training:
        # Validation must see every cut exactly once per rank split: map-style with rank/world_size does that.
        return False
    if cfg.force_map_dataset:
        return False
    if cfg.force_iterable_dataset:
        return True
    return isinstance(source, ManifestSource) and source.is_shar


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
        # (cuts, seconds) that the last complete pass yielded after the duration filter; None before one ended.
        self.last_pass: Optional[Tuple[int, float]] = None
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
        return mix_seed(base, self.rank, worker)

    def _pass_seed(self, base: int, pass_idx: int) -> int:
        return mix_seed(base, pass_idx)

    def _split_seed(self) -> int:
        # Must be equal on every rank and worker, or their shares would overlap: so never "trng" (per reader) and
        # never mixed with the rank or worker. `seed` is checked to be the same integer on every rank.
        base = self.shard_seed if isinstance(self.shard_seed, int) else self.seed
        return mix_seed(int(base), self.epoch)

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
        return self._map_style_pass(self.seed + self.epoch)

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

    def _map_style_pass(self, pass_seed: int) -> Iterator[Cut]:
        """One pass in map-style mode: every rank reads all the cuts and the Lhotse sampler keeps its share of the
        batches. (Iterable mode reads windows of its own share of the parts: nest_ssl.data.stream_state.)"""
        src = self.cuts if isinstance(self.cuts, ManifestSource) else None
        it: Iterator[Cut] = (src.iter_parts(pass_seed if self.shuffle_parts else None) if src is not None
                             else iter(self.cuts))
        if self.shuffle_buffer_size:
            # A seed distinct from the part-order one, so the two shuffles are not correlated.
            it = streaming_shuffle(it, bufsize=self.shuffle_buffer_size, rng=random.Random(pass_seed * 2 + 1))
        counts = FilterCounts()
        yield from self._duration_filter(it, counts)
        self._check_filtered(counts, None)

    def _duration_filter(self, it: Iterable[Cut], counts: "FilterCounts") -> Iterator[Cut]:
        lo, hi = self.min_duration, self.max_duration
        for cut in it:
            counts.n_in += 1
            d = cut.duration
            if (lo is not None and d < lo) or (hi is not None and d > hi):
                counts.shortest, counts.longest = min(counts.shortest, d), max(counts.longest, d)
                continue
            counts.n_out += 1
            counts.seconds += d
            yield cut

    def _check_filtered(self, counts: "FilterCounts", split: Optional[Tuple[int, int, int, int]]) -> None:
        """After a whole pass: note what it held (for the share-of-data warning); warn (one reader's share) or raise
        when the duration filter removed every cut."""
        self.last_pass = (counts.n_out, counts.seconds)
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
    fast-forwards sees the very same cut order as the original one; and reports, once, an epoch that trained on
    only a small share of the data (bucketing with drop_last on a small dataset)."""

    source: SamplerSource
    iterable_dataset: bool = False
    worker_init_fn = None
    _share_reported = False

    def __iter__(self):
        # A restored epoch resumes mid-way: its batch counts here would be partial, so it is not reported.
        restored = just_restored(self)
        self._epoch_counts = None if restored else [0, 0, 0.0]  # batches, cuts, seconds
        if not restored:
            self.source.epoch = self.epoch
        if self.source.iterable:
            self.source.start()
            if self.source.window is not None:
                set_iteration_seed(self, self.source.window.seed(2))
        return super().__iter__()

    def __next__(self):
        # Iterable mode: one Lhotse iteration per window of shards (fresh buffers and batch RNG), so that the
        # stream's state at a window's start is empty and a resume jumps there (nest_ssl.data.stream_state).
        while True:
            try:
                batch = super().__next__()
                break
            except StopIteration:
                if self.source.iterable and self.source.advance():
                    set_iteration_seed(self, self.source.window.seed(2))
                    super().__iter__()  # Lhotse's restart of the iteration (not just restored: it resets)
                    continue
                self._report_share()
                raise
        counts = getattr(self, "_epoch_counts", None)
        if counts is not None:
            counts[0] += 1
            counts[1] += len(batch)
            counts[2] += sum(c.duration for c in batch)
        return batch

    def _report_share(self) -> None:
        counts = getattr(self, "_epoch_counts", None)
        total = self.source.last_pass
        if self._share_reported or counts is None or not total or self.iterable_dataset:
            return
        self._share_reported = True
        batches, cuts, seconds = counts
        # Each rank keeps every world_size-th batch; the pass total is that of all ranks together.
        world = max(1, int(getattr(self, "world_size", 1) or 1))
        used_cuts, used_seconds = cuts * world, seconds * world
        share = used_cuts / total[0]
        if share >= MIN_EPOCH_SHARE:
            return
        what = self.source.what
        bucketing = isinstance(self, DynamicBucketingSampler)
        why = ("each of the buckets drops its incomplete last batch (drop_last)" if bucketing and self.drop_last
               else "drop_last drops the incomplete last batch" if self.drop_last else "batches were left out")
        log.warning(
            "%s: an epoch trains on %d of %d cuts (%.0f%%; %.2f of %.2f h) in %d batch(es) per rank: %s. For a "
            "dataset this small lower %s.batch_duration / %s.batch_size, set %s.drop_last=false%s",
            what, used_cuts, total[0], 100 * share, used_seconds / 3600, total[1] / 3600, batches, why,
            what, what, what, f" or lower {what}.num_buckets" if bucketing else "",
        )


class NestBucketingSampler(_NestSamplerMixin, DynamicBucketingSampler):
    """DynamicBucketingSampler over a SamplerSource (see build_sampler); its state_dict also works with per-bucket
    batch sizes (the constraint is rebuilt from the config on resume, see lhotse_adapter.bucketing_state_dict)."""

    def state_dict(self):
        return bucketing_state_dict(self, super().state_dict)


class NestCutSampler(_NestSamplerMixin, DynamicCutSampler):
    """DynamicCutSampler over a SamplerSource (see build_sampler)."""


def build_sampler(
    source: Union[ManifestSource, Iterable[Cut]],
    ds_cfg: Union[DataLoadingConfig, Any],
    *,
    section: Optional[str] = None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    training: bool = True,
) -> CutSampler:
    """A Lhotse sampler over `source` configured by `ds_cfg`. See the module docstring for the two modes.

    source: the ManifestSource of `open_source` (its parts, files or Shar shards, are ordered and split per rank
    and worker), or any iterable of cuts (then every reader walks all of it).
    ds_cfg: a DataLoadingConfig (parse_data_config), or a section node/dict, parsed here.
    section: the config section named in messages (default train_ds / validation_ds).
    seed: the run's seed, used unless ds_cfg sets `seed` itself; must be the same on every rank.
    rank, world_size: the DDP topology. Map-style samplers use them to hand out disjoint batches; in iterable mode
    they only seed the per-rank shard order (the sampler itself is rank 0 of 1).
    training: False = validation: no shuffling unless ds_cfg says so, always finite and map-style.

    The result has `iterable_dataset` (bool), `worker_init_fn` (for the DataLoader, None in map-style) and
    `source` (the SamplerSource) attributes, and Lhotse's `state_dict()` / `load_state_dict()`.
    """
    what = section or ("train_ds" if training else "validation_ds")
    cfg = parse_data_config(ds_cfg, what)
    cfg.warn_ignored(what)
    shuffle = bool(training if cfg.shuffle is None else cfg.shuffle)
    base_seed = seed if cfg.seed is None else cfg.seed
    parts = source if isinstance(source, ManifestSource) else None

    iterable = uses_iterable_dataset(source, cfg, training)
    infinite = iterable and not cfg.force_finite
    shuffle_buffer = cfg.buffer_size("shuffle_buffer_size", iterable)

    if iterable:
        if parts is None and infinite:
            log.warning(
                "%s: iterable mode over cuts that are not a ManifestSource (open_source): shard order cannot be "
                "shuffled per rank/worker, so workers may read the same data",
                what,
            )
        elif parts is None:
            log.warning(
                "%s: force_finite over cuts that are not a ManifestSource (open_source): every rank and worker "
                "reads all of them and keeps every (world_size x num_workers)-th cut",
                what,
            )
        elif infinite and parts.num_parts < 2:
            log.warning(
                "%s: iterable mode over a single manifest file: every rank and worker reads the same file "
                "(only the shuffle buffer differs); use a Shar directory or many manifest files",
                what,
            )
        elif not infinite and parts.num_parts < world_size * max(1, cfg.num_workers):
            log.warning(
                "%s: force_finite over %d part(s) for %d rank(s) x %s worker(s): each part is read by one of them "
                "only, so some get nothing; use more Shar shards (a smaller --shard-size) or manifest files",
                what, parts.num_parts, world_size, cfg.num_workers,
            )
    # Per-bucket batch sizes (NeMo's bucket_batch_size): the last bin is the longest cut kept, the others are the
    # sampler's bucket boundaries, and Lhotse's FixedBucketBatchSizeConstraint sizes each bucket's batches.
    batch_sizes = cfg.bucket_batch_sizes()
    keep_up_to = cfg.max_duration
    if batch_sizes is not None:
        last_bin = cfg.bins()[-1]
        if keep_up_to is None or keep_up_to > last_bin:
            log.info("%s: cuts longer than %g s (the last bucket_duration_bins entry) are left out", what, last_bin)
            keep_up_to = last_bin
    source_kwargs = dict(
        seed=base_seed,
        # In iterable mode each rank/worker must read the shards in its own order, whatever `shuffle` says,
        # or they would all produce the same batches.
        shuffle_parts=shuffle or iterable,
        # DynamicCutSampler has its own (seed, epoch)-seeded shuffle buffer; the bucketing sampler has none
        # (it only shuffles within its buckets), so the source provides it.
        shuffle_buffer_size=shuffle_buffer if (shuffle and cfg.use_bucketing) else None,
        min_duration=cfg.min_duration,
        max_duration=keep_up_to,
        iterable=iterable,
        infinite=infinite,
        shard_seed=cfg.shard_seed,
        rank=rank,
        world_size=world_size,
        what=what,
    )
    sampler_source = SamplerSource(source, window_shards=cfg.stream_window_shards, **source_kwargs)
    sampler_rank, sampler_world = (0, 1) if iterable else (rank, world_size)
    data = CutSet(sampler_source)
    if cfg.use_bucketing:
        bins = cfg.bins()
        if bins is None:
            estimate_from = data
            if parts is not None and parts.is_shar:
                # Durations are in the cuts files; reading the audio tars for them would be wasted I/O.
                stats_kwargs = dict(source_kwargs, iterable=False, infinite=False)
                estimate_from = CutSet(SamplerSource(parts.metadata_only(), **stats_kwargs))
            # A uniform sample would read the whole manifest at every start, on every rank (minutes for
            # LibriLight), so that is left to `nest-ssl cuts estimate-bins`; say so when the head was all we read.
            n_est = cfg.num_cuts_for_bins_estimate
            bins, exhausted = bins_from_head(estimate_from, cfg.num_buckets, n_est, what=what)
            if not exhausted:
                log.warning(
                    "%s: bucket_duration_bins estimated from the first %d cuts only (num_cuts_for_bins_estimate); "
                    "unless the manifest is shuffled they are skewed. Precompute them from a sample of the whole "
                    "manifest with `nest-ssl cuts estimate-bins` and set %s.bucket_duration_bins",
                    what, n_est, what,
                )
        constraint = None
        if batch_sizes is not None:
            constraint = FixedBucketBatchSizeConstraint(max_seq_len_buckets=list(bins), batch_sizes=batch_sizes)
            bins = bins[:-1]
        sampler: CutSampler = NestBucketingSampler(
            data,
            max_duration=None if constraint else cfg.batch_duration,
            max_cuts=None if constraint else cfg.batch_size,
            constraint=constraint,
            shuffle=shuffle,
            drop_last=cfg.drop_last,
            duration_bins=bins,
            buffer_size=cfg.buffer_size("bucket_buffer_size", iterable),
            quadratic_duration=cfg.quadratic_duration,
            world_size=sampler_world,
            rank=sampler_rank,
            seed=base_seed,
            sync_buckets=cfg.sync_buckets,
            concurrent=cfg.concurrent_bucketing,
        )
    else:
        sampler = NestCutSampler(
            data,
            max_duration=cfg.batch_duration,
            max_cuts=cfg.batch_size,
            shuffle=shuffle,
            drop_last=cfg.drop_last,
            shuffle_buffer_size=max(1, shuffle_buffer),
            quadratic_duration=cfg.quadratic_duration,
            world_size=sampler_world,
            rank=sampler_rank,
            seed=base_seed,
        )
    worker_init_fn = None
    if iterable:
        from lhotse.dataset.dataloading import make_worker_init_fn

        worker_init_fn = make_worker_init_fn(rank=rank, world_size=world_size, seed=base_seed)
    add_nest_attributes(sampler, source=sampler_source, iterable=iterable, worker_init_fn=worker_init_fn)
    log.info(
        "%s sampler: %s, %s, batch_size=%s batch_duration=%s shuffle=%s drop_last=%s rank=%d/%d",
        what,
        type(sampler).__name__,
        "iterable (per-worker, infinite)" if infinite else ("iterable (one pass, disjoint shares)" if iterable else "map-style"),
        cfg.batch_size,
        cfg.batch_duration,
        shuffle,
        cfg.drop_last,
        rank,
        world_size,
    )
    return sampler
