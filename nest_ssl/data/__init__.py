"""nest_ssl.data: the Lhotse pipeline (manifests, windows, sampler, dataset, augmentation).

``build_dataloader(ds_cfg, ...)`` turns a ``train_ds``/``validation_ds`` config section (a ``DataLoadingConfig``
from ``parse_data_config``, or a node parsed on entry) into a DataLoader: lazy manifest source (``open_source``) ->
lhotse sampler (``build_sampler``) -> ``AudioNoiseDataset`` (read, reject bad audio, reverb, NEST augmentation) ->
``AudioNoiseBatch``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader

from nest_ssl.data.augment import MultiSpeakerNoiseAugmentation
from nest_ssl.data.batch import AudioNoiseBatch
from nest_ssl.data.config import DataLoadingConfig, parse_data_config
from nest_ssl.data.dataset import AudioNoiseDataset, ReverbConfig
from nest_ssl.data.device_augment import DeviceAugment, batch_to_device, check_augment_on
from nest_ssl.data.lhotse_adapter import update_dataloading_info
from nest_ssl.data.noise import EmptyNoiseManifestError, NoiseSet
from nest_ssl.seeding import hash_seed, seed_all

__all__ = [
    "AudioNoiseBatch",
    "AudioNoiseDataset",
    "DataLoadingConfig",
    "DeviceAugment",
    "EmptyNoiseManifestError",
    "MultiSpeakerNoiseAugmentation",
    "NestDataLoader",
    "NoiseSet",
    "ResumableIterable",
    "ReverbConfig",
    "batch_to_device",
    "build_augmentor",
    "build_dataloader",
    "build_dataset",
    "make_dataloader",
    "parse_data_config",
]


class NestDataLoader(DataLoader):
    """A DataLoader that hands the sampler's epoch to the dataset at every ``iter()``.

    The dataset seeds each batch from (seed, epoch, cut ids); workers are started per iteration
    (``persistent_workers=False``) with a copy of the dataset, so the epoch must be set before they start.
    ``cut_sampler`` is the lhotse sampler in both modes (in map-style mode it is also ``.sampler``);
    ``source`` is the ManifestSource it reads (its ``num_parts`` are the files or Shar shards), None when the
    loader was made from other cuts. ``batch_transform`` mixes the batches on the training device when the dataset
    leaves that to it (``augment_on: device``); the trainer calls ``batch_to_device(loader, batch, device)``.
    """

    cut_sampler: Any = None
    source: Any = None
    batch_transform: Any = None  # DeviceAugment with augment_on: device (called by batch_to_device)

    def __iter__(self):
        sampler = self.cut_sampler
        dataset = getattr(self.dataset, "dataset", self.dataset)  # IterableDatasetWrapper holds the dataset
        epoch = getattr(sampler, "epoch", None)
        if epoch is not None and hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        return super().__iter__()


try:
    from lhotse.dataset import IterableDatasetWrapper as _LhotseIterableWrapper
except ImportError:  # pragma: no cover
    _LhotseIterableWrapper = torch.utils.data.IterableDataset


class ResumableIterable(_LhotseIterableWrapper):
    """Lhotse's IterableDatasetWrapper (a sampler copy per DataLoader worker) whose streams can be resumed exactly,
    at a cost bounded by one window of shards.

    Each worker's stream is a deterministic function of (seed, epoch, rank, stream worker), sampled window by
    window (nest_ssl.data.stream_state). Every batch carries ``stream = {"worker": w, "batches": n, "window": k,
    "in_window": b, "parts": [...]}``. The trainer keeps those of the batches it trained on (not the prefetched
    ones) in its checkpoint; on resume it sets ``resume = {"offset": o, "skip": {w: n}, "at": {w: [k, b]}}``
    before ``iter(loader)``: DataLoader worker i plays stream (i + o) % num_workers (so the round-robin continues
    with the stream whose batch comes next), jumps to window k without opening the shards before it, replays the
    b batches it gave in that window from the cuts files only, and reads on. Without ``at`` (an older checkpoint)
    the n batches are replayed from the stream's start, from the cuts files only.
    """

    def __init__(self, dataset, sampler) -> None:
        super().__init__(dataset=dataset, sampler=sampler)
        self.resume: Optional[dict] = None
        self._stream = 0
        self._count = 0
        self._window: Optional[int] = None
        self._in_window = 0
        self._batches = None  # this iteration's sampler iterator (not Lhotse's own `_sampler_iter`)

    def __iter__(self):
        import logging
        import time

        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        resume = self.resume or {}
        self._stream = (wid + int(resume.get("offset", 0))) % nw
        source = getattr(self.sampler, "source", None)
        windowed = source is not None and getattr(source, "iterable", False)
        if source is not None:
            source.stream_worker = self._stream
        skip = int((resume.get("skip") or {}).get(self._stream, 0))
        at = (resume.get("at") or {}).get(self._stream)
        self._count, self._window, self._in_window = 0, None, 0
        replay = skip
        if skip and windowed and at is not None:
            source.resume_window = int(at[0])
            replay = int(at[1])
            self._count = skip - replay
        t0 = time.perf_counter()
        if replay and windowed:
            source.metadata_only = True
        self._batches = iter(self.sampler)
        try:
            for _ in range(replay):
                try:
                    sampled = next(self._batches)
                except StopIteration:
                    break
                self._count += 1
                self._note_window(source if windowed else None)
                if windowed:
                    source.drop_pending(list(sampled))
        finally:
            if windowed:
                source.metadata_only = False
        if skip:
            log = logging.getLogger(__name__)
            if windowed:
                w = source.window
                log.info(
                    "stream worker %d: resumed in window %d of its stream (%s)%s: replayed %d batch(es) from %d "
                    "cuts' metadata (no audio read), %d buffered cut(s) get their audio when batched; %.2f s",
                    self._stream, w.index if w is not None else -1, w.describe() if w is not None else "past the end",
                    "" if at is not None else " from an older checkpoint, replayed from the stream's start",
                    replay, source.cuts_read, len(source.pending), time.perf_counter() - t0)
            else:
                log.info("stream worker %d: skipped the %d batch(es) it had given before the checkpoint in %.2f s",
                         self._stream, self._count, time.perf_counter() - t0)
        return self

    def _note_window(self, source) -> None:
        k = source.window.index if source is not None and source.window is not None else 0
        if k != self._window:
            self._window, self._in_window = k, 0
        self._in_window += 1

    def __next__(self):
        sampled = next(self._batches)
        source = getattr(self.sampler, "source", None)
        windowed = source is not None and getattr(source, "iterable", False)
        if windowed and source.pending:
            from nest_ssl.data.shar_stream import attach

            attach(sampled, source.pending)  # cuts buffered during a resume's replay: their audio, by cut id
        update_dataloading_info(self, sampled)
        self._count += 1
        self._note_window(source if windowed else None)
        batch = self.dataset[sampled]
        parts = sorted({str(p) for p in (getattr(c, "shard_origin", None) for c in sampled) if p is not None})
        batch.stream = {"worker": self._stream, "batches": self._count, "window": self._window,
                        "in_window": self._in_window, "parts": parts}
        return batch


def _worker_init(base_seed: int, sampler_init: Optional[Callable[[int], None]], worker_id: int) -> None:
    # One thread per worker (the workers already run in parallel), and seeded global RNGs for any third-party
    # code; our own randomness does not use them.
    torch.set_num_threads(1)
    seed_all(hash_seed("worker", base_seed, worker_id))
    if sampler_init is not None:  # iterable mode: lhotse's per-worker sampler seeding comes last
        sampler_init(worker_id)


def build_augmentor(node: Any) -> Optional[Any]:
    """The ``batch_augmentor`` node (NeMo's or our ``_target_``; none means ours) -> augmentor, or None."""
    if node is None:
        return None
    if isinstance(node, MultiSpeakerNoiseAugmentation):
        return node
    params = dict(node.items()) if hasattr(node, "items") else dict(node)
    if not params:
        return None
    if "_target_" not in params:
        params["_target_"] = "nest_ssl.data.augment.MultiSpeakerNoiseAugmentation"
    from nest_ssl.config import instantiate  # maps NeMo's class path to ours

    return instantiate(params)


def build_dataset(ds_cfg: Any, *, sample_rate: int = 16000, seed: int = 0, training: bool = True,
                  section: Optional[str] = None) -> AudioNoiseDataset:
    """``AudioNoiseDataset`` from the ``noise_manifest``, ``batch_augmentor`` and ``reverb`` keys of ``ds_cfg``
    (a DataLoadingConfig, or a node parsed here)."""
    section = section or ("train_ds" if training else "validation_ds")
    cfg = parse_data_config(ds_cfg, section)
    if cfg.sample_rate is not None and cfg.sample_rate != int(sample_rate):
        from nest_ssl.config import ConfigError

        raise ConfigError(
            f"{section}.sample_rate={cfg.sample_rate} differs from the model's {sample_rate}; set it to "
            f"${{model.sample_rate}} (audio is resampled to the model's rate)"
        )
    augmentor = build_augmentor(cfg.batch_augmentor)
    check_augment_on(cfg.augment_on, augmentor, section)
    return AudioNoiseDataset(
        sample_rate=sample_rate,
        noise=cfg.noise_manifest,
        batch_augmentor=augmentor,
        reverb=cfg.reverb,
        seed=seed,
        training=training,
        section=section,
        augment_on=cfg.augment_on,
    )


def make_dataloader(dataset: torch.utils.data.Dataset, sampler: Any, ds_cfg: Optional[DataLoadingConfig] = None, *,
                    seed: int = 0) -> NestDataLoader:
    """The DataLoader around a dataset over sampler batches (lhotse's pattern: ``batch_size=None``).

    Map-style (default): the sampler runs in this process and workers get CutSets. When the sampler says
    ``iterable_dataset`` (Shar input), each worker runs its own sampler copy through lhotse's
    ``IterableDatasetWrapper`` with the sampler's ``worker_init_fn``. ``ds_cfg`` gives ``num_workers`` and
    ``pin_memory`` (none: 0 and false).
    """
    cfg = ds_cfg if ds_cfg is not None else DataLoadingConfig()
    num_workers = cfg.num_workers
    iterable = bool(getattr(sampler, "iterable_dataset", False))
    sampler_init = getattr(sampler, "worker_init_fn", None) if iterable else None
    common = dict(
        batch_size=None,
        num_workers=num_workers,
        # Pinning needs a CUDA runtime; on a CPU-only machine it would only warn, so it is switched off there.
        pin_memory=cfg.pin_memory and torch.cuda.is_available(),
        worker_init_fn=functools.partial(_worker_init, int(seed), sampler_init) if num_workers > 0 else None,
        persistent_workers=False,
    )
    if iterable:
        loader = NestDataLoader(ResumableIterable(dataset=dataset, sampler=sampler), **common)
    else:
        loader = NestDataLoader(dataset, sampler=sampler, **common)
    loader.cut_sampler = sampler
    if getattr(dataset, "augment_on", "worker") == "device":
        loader.batch_transform = DeviceAugment(dataset.batch_augmentor, dataset.noise)
        if isinstance(dataset.noise, NoiseSet):
            import logging

            logging.getLogger("nest_ssl.data").warning(
                "augment_on=device with a noise manifest (%s): the training process decodes a noise clip for every "
                "noise-mode utterance. Build a noise bank (`nest-ssl noise bank %s BANK_DIR`) and point "
                "noise_manifest at BANK_DIR to slice them from memory instead.", dataset.noise.source,
                dataset.noise.source)
    return loader


def build_dataloader(
    ds_cfg: Any,
    *,
    sample_rate: int = 16000,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    training: bool = True,
    section: Optional[str] = None,
) -> NestDataLoader:
    """DataLoader for a ``train_ds``/``validation_ds`` section: a DataLoadingConfig (``parse_data_config``; the
    keys and defaults are there), or a DictConfig/dict parsed here once.

    ``section`` names the section in messages (default ``train_ds`` / ``validation_ds``). With ``training=False``
    the augmentation of every batch is fixed by ``seed`` and the cut ids, so val_loss compares across
    checkpoints. The loader keeps the manifest source it reads as ``loader.source``.
    """
    from nest_ssl.config import ConfigError
    from nest_ssl.data.manifests import open_source
    from nest_ssl.data.sampler import build_sampler

    section = section or ("train_ds" if training else "validation_ds")
    cfg = parse_data_config(ds_cfg, section)
    if cfg.manifest_filepath is None:
        raise ConfigError(f"{section}.manifest_filepath is not set; point it at a manifest (NeMo JSON, lhotse, Shar)")
    source = open_source(cfg.manifest_filepath, what=f"{section}.manifest_filepath", sample_rate=sample_rate)
    sampler = build_sampler(source, cfg, section=section, seed=seed, rank=rank, world_size=world_size,
                            training=training)
    dataset = build_dataset(cfg, sample_rate=sample_rate, seed=seed, training=training, section=section)
    loader = make_dataloader(dataset, sampler, cfg, seed=seed)
    loader.source = source
    return loader
