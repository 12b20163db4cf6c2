"""The ``train_ds`` / ``validation_ds`` config sections as one typed object: ``DataLoadingConfig``.

``parse_data_config(node, section)`` merges a section (DictConfig, dict or None) onto
``OmegaConf.structured(DataLoadingConfig)``, so OmegaConf checks every value's type and rejects unknown keys, then
``validate()`` checks ranges and the keys that depend on each other. Every problem is one ``ConfigError`` naming
``<section>.<key>``, the value and the fix. The defaults live here and nowhere else.

The keys are those of NeMo's NEST yaml (``nest_fast-conformer.yaml``), the Lhotse dataloading keys NeMo reads
(``LhotseDataLoadingConfig``: ``batch_duration``, ``use_bucketing``, ``shard_seed``, ...) and ours (``noise_manifest``,
``reverb``, ``force_finite``, ...). The defaults are NeMo's, except ``concurrent_bucketing: false`` (a background
thread makes sampling non-deterministic, which breaks exact resume) and ``shard_seed: randomized`` (reproducible;
NeMo uses ``trng``). Nodes built from a ``_target_`` (``batch_augmentor``) and ``reverb`` stay plain dicts; they are
checked where they are built.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from nest_ssl.config import ConfigError

log = logging.getLogger(__name__)

# Iterable (Shar) mode: a cut read from a Shar shard carries its encoded audio, so every buffered cut costs ~17 kB per
# second of audio (~0.3 MB for a 17 s LibriLight window) in each DataLoader worker, and NeMo's 10000 + 10000 would
# hold ~5 GB per worker. Shards are globally shuffled when written (`nest-ssl shar export`), so a small shuffle
# buffer suffices, and 2000 cuts still fill 30 buckets for batches of ~1000 s of 17 s cuts.
MAP_STYLE_BUFFERS = {"bucket_buffer_size": 10000, "shuffle_buffer_size": 10000}
ITERABLE_BUFFERS = {"bucket_buffer_size": 2000, "shuffle_buffer_size": 1000}


@dataclass
class DataLoadingConfig:
    """One ``train_ds`` / ``validation_ds`` section. ``None`` means "decided by the mode" where noted."""

    # -- input
    manifest_filepath: Any = None  # path | "a,b" | [a, b]: NeMo JSON, Lhotse cuts/recordings, Shar dirs
    noise_manifest: Any = None  # the same kinds; null: speech-only mixing
    sample_rate: Optional[int] = None  # must equal model.sample_rate when given
    # -- batch size: cuts per batch and/or seconds of audio per batch
    batch_size: Optional[int] = None
    batch_duration: Optional[float] = None
    quadratic_duration: Optional[float] = None
    # -- bucketing (Lhotse's DynamicBucketingSampler)
    use_bucketing: bool = False
    num_buckets: int = 30
    bucket_duration_bins: Any = None  # list of seconds, increasing; null: estimated at start
    num_cuts_for_bins_estimate: int = 10000
    bucket_buffer_size: Optional[int] = None  # null: 10000, or 2000 over Shar
    concurrent_bucketing: bool = False
    sync_buckets: bool = True
    # -- order
    shuffle: Optional[bool] = None  # null: true for training, false for validation
    shuffle_buffer_size: Optional[int] = None  # null: 10000, or 1000 over Shar
    drop_last: bool = False
    seed: Optional[int] = None  # null: the run's seed
    shard_seed: Any = "randomized"  # int | "randomized" | "trng"
    # -- duration filter
    min_duration: Optional[float] = None
    max_duration: Optional[float] = None
    # -- sampler mode (see nest_ssl.data.sampler)
    force_finite: bool = False
    force_map_dataset: bool = False
    force_iterable_dataset: bool = False
    # iterable (Shar) mode: shards per stream window (nest_ssl.data.stream_state); null: 8; 0: a whole pass
    stream_window_shards: Optional[int] = None
    # -- DataLoader
    num_workers: int = 0
    pin_memory: bool = False
    # -- augmentation
    batch_augmentor: Any = None  # {_target_: ..., prob: ...}; null: none
    reverb: Any = None  # {enabled, prob, rir_manifest, early_only, normalize_output}
    # where batch_augmentor mixes: "worker" (DataLoader workers) or "device" (the training device, on the collated
    # batch; workers only decode and cut: nest_ssl.data.device_augment)
    augment_on: str = "worker"
    # -- NeMo keys of the NEST yaml that have no effect on self-supervised audio (no text, no tarred data)
    use_start_end_token: bool = False
    trim_silence: bool = False
    is_concat: bool = False
    concat_sampling_technique: Optional[str] = "temperature"
    concat_sampling_temperature: Optional[float] = 1.0
    concat_sampling_probabilities: Any = None
    is_tarred: bool = False
    tarred_audio_filepaths: Any = None
    shuffle_n: int = 2048
    bucketing_strategy: Optional[str] = "synced_randomized"
    bucketing_batch_size: Any = None
    # -- per-bucket batch sizes (NeMo's / Lhotse's): one cut count per bucket_duration_bins entry, whose last value
    # is then the longest cut kept; `nest-ssl tune-batch` prints both lines. Replaces batch_size/batch_duration.
    bucket_batch_size: Any = None
    # -- NeMo keys known but not implemented: a warning when set
    multi_config: Any = None
    input_cfg: Any = None

    def buffer_size(self, key: str, iterable: bool) -> int:
        """``bucket_buffer_size`` / ``shuffle_buffer_size``, or the default of the sampler mode."""
        value = getattr(self, key)
        return int((ITERABLE_BUFFERS if iterable else MAP_STYLE_BUFFERS)[key] if value is None else value)

    def bins(self) -> Optional[List[float]]:
        """``bucket_duration_bins`` as floats (validate() has checked them)."""
        return None if self.bucket_duration_bins is None else [float(b) for b in _bins_list(self.bucket_duration_bins)]

    def bucket_batch_sizes(self) -> Optional[List[int]]:
        """``bucket_batch_size`` as ints (validate() has checked them), or None."""
        return None if self.bucket_batch_size is None else [int(b) for b in _bins_list(self.bucket_batch_size)]

    def validate(self, section: str = "train_ds") -> "DataLoadingConfig":
        """Ranges and keys that depend on each other; raises ConfigError naming ``<section>.<key>``."""
        for key, (low, above, what) in _RANGES.items():
            value = getattr(self, key)
            if value is not None and (value <= low if above else value < low):
                raise ConfigError(f"{section}.{key}={value!r}: must be {_range_text(key)} ({what})")
        _check_bucket_batch_size(section, self)
        if self.batch_size is None and self.batch_duration is None and self.bucket_batch_size is None:
            raise ConfigError(f"{section}: set {section}.batch_size (cuts per batch) or {section}.batch_duration "
                              "(seconds per batch)")
        lo, hi = self.min_duration, self.max_duration
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"{section}.min_duration={lo:g} is larger than {section}.max_duration={hi:g}; "
                              "lower min_duration or raise max_duration")
        _check_bins(section, self.bucket_duration_bins)
        if self.augment_on not in ("worker", "device"):
            raise ConfigError(f"{section}.augment_on={self.augment_on!r}: must be 'worker' (DataLoader workers mix) or "
                              "'device' (the training device mixes the collated batch)")
        if self.use_bucketing and self.bucket_duration_bins is None and self.num_buckets < 2:
            raise ConfigError(f"{section}.num_buckets={self.num_buckets}: bucketing needs at least 2 buckets; set "
                              f"{section}.num_buckets=2 or more, or {section}.use_bucketing=false")
        if not (isinstance(self.shard_seed, int) and not isinstance(self.shard_seed, bool)) and \
                self.shard_seed not in ("randomized", "trng"):
            raise ConfigError(f"{section}.shard_seed={self.shard_seed!r}: must be an integer, 'randomized' or 'trng'")
        if self.force_map_dataset and self.force_iterable_dataset:
            raise ConfigError(f"{section}: force_map_dataset and force_iterable_dataset are both true; set at most one")
        if self.is_tarred:
            raise ConfigError(f"{section}.is_tarred=true: NeMo tarred datasets are not read by nest-ssl; convert the "
                              "manifest to Lhotse Shar with `nest-ssl shar export`, point "
                              f"{section}.manifest_filepath at it and set {section}.is_tarred=false")
        if isinstance(self.manifest_filepath, str) and self.manifest_filepath != "" and \
                not self.manifest_filepath.strip():
            raise ConfigError(f"{section}.manifest_filepath is blank; point it at a manifest")
        return self

    def warn_ignored(self, section: str) -> None:
        """One warning per key that is set but has no effect here (nothing is dropped silently)."""
        defaults = DataLoadingConfig()
        for key, why in _NO_EFFECT.items():
            value = getattr(self, key)
            if value not in (None, False) and value != getattr(defaults, key):
                log.warning("%s.%s=%r is ignored: %s", section, key, value, why)
        if self.concurrent_bucketing:
            log.warning("%s.concurrent_bucketing=true: batches are not reproducible, so a resumed run will not "
                        "continue with exactly the batches it would have seen", section)


# key -> (lowest value, whether the bound is exclusive, what the value is)
_RANGES: Dict[str, Tuple[float, bool, str]] = {
    "batch_size": (1, False, "cuts per batch"),
    "batch_duration": (0, True, "seconds of audio per batch"),
    "quadratic_duration": (0, True, "seconds"),
    "min_duration": (0, False, "seconds"),
    "max_duration": (0, True, "seconds"),
    "num_buckets": (1, False, "buckets"),
    "num_cuts_for_bins_estimate": (1, False, "cuts"),
    "bucket_buffer_size": (1, False, "cuts"),
    "shuffle_buffer_size": (1, False, "cuts"),
    "num_workers": (0, False, "DataLoader worker processes"),
    "stream_window_shards": (0, False, "shards per stream window; 0: a whole pass"),
    "sample_rate": (1, False, "Hz"),
}

# Keys that are read (NeMo's yaml has them) but change nothing here, and why.
_NO_EFFECT = {
    "use_start_end_token": "no text is read in self-supervised pretraining",
    "trim_silence": "audio is not trimmed; cut long recordings with `nest-ssl cuts windows`",
    "is_concat": "datasets are not concatenated by sampling technique; list several manifests instead",
    "concat_sampling_probabilities": "datasets are not weighted; list several manifests instead",
    "tarred_audio_filepaths": "NeMo tarred audio is not read; use Lhotse Shar (`nest-ssl shar export`)",
    "bucketing_batch_size": "NeMo's non-Lhotse bucketing; use batch_duration with use_bucketing",
    "bucketing_strategy": "NeMo's non-Lhotse bucketing; buckets are Lhotse's (use_bucketing, sync_buckets)",
    "shuffle_n": "NeMo's tarred-data shuffle; the shuffle buffer is shuffle_buffer_size",
    "multi_config": "one input config per dataset section",
    "input_cfg": "give manifest_filepath (paths, comma-separated or a list)",
}

def _field_kind(key: str) -> Tuple[str, bool]:
    """(what the key's value must be, whether null is allowed) from the dataclass annotation."""
    f = {f.name: f for f in fields(DataLoadingConfig)}[key]
    text = str(f.type)
    optional = text.startswith("Optional[")
    base = text[len("Optional["):-1] if optional else text
    kind = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(base, "valid")
    return kind, optional


def _range_text(key: str) -> str:
    low, above, _ = _RANGES[key]
    return f"{'>' if above else '>='} {low:g}"


def _bins_list(value: Any) -> List[Any]:
    if isinstance(value, str):  # "[2.5,5.0]" or "2.5,5.0" from a shell
        return [v.strip() for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
    return list(value)


def _check_bins(section: str, value: Any) -> None:
    key = f"{section}.bucket_duration_bins"
    if value is None:
        return
    if not isinstance(value, (str, list, tuple)):
        raise ConfigError(f"{key}={value!r}: must be a list of durations in seconds, e.g. [2.5,5.0,10.0] "
                          "(`nest-ssl cuts estimate-bins` prints one)")
    items = _bins_list(value)
    if not items:
        raise ConfigError(f"{key}={value!r}: must be a non-empty list of durations in seconds, e.g. [2.5,5.0,10.0] "
                          "(`nest-ssl cuts estimate-bins` prints one), or null to estimate them")
    if any(isinstance(v, (list, tuple)) for v in items):
        raise ConfigError(f"{key}: 2D bins ([duration, tokens] pairs) are not supported; give durations only")
    try:
        bins = [float(v) for v in items if not isinstance(v, bool)]
    except (TypeError, ValueError):
        bins = []
    if len(bins) != len(items) or not all(b > 0 for b in bins):
        raise ConfigError(f"{key}={value!r}: every bin must be a positive number of seconds")
    if any(b <= a for a, b in zip(bins, bins[1:])):
        raise ConfigError(f"{key}={value!r}: must be strictly increasing; re-run `nest-ssl cuts estimate-bins`")


def _check_bucket_batch_size(section: str, cfg: "DataLoadingConfig") -> None:
    key = f"{section}.bucket_batch_size"
    value = cfg.bucket_batch_size
    if value is None:
        return
    if not isinstance(value, (str, list, tuple)):
        raise ConfigError(f"{key}={value!r}: must be a list of batch sizes (cuts), one per bucket, e.g. [64,32,16] "
                          "(`nest-ssl tune-batch` prints one)")
    items = _bins_list(value)
    try:
        sizes = [int(v) for v in items if not isinstance(v, bool) and float(v) == int(float(v))]
    except (TypeError, ValueError):
        sizes = []
    if not items or len(sizes) != len(items) or not all(b >= 1 for b in sizes):
        raise ConfigError(f"{key}={value!r}: every entry must be a whole number of cuts >= 1")
    if not cfg.use_bucketing:
        raise ConfigError(f"{key} is set but {section}.use_bucketing is false; set {section}.use_bucketing=true "
                          f"or {key}=null")
    if cfg.bucket_duration_bins is None:
        raise ConfigError(f"{key} needs {section}.bucket_duration_bins (one upper duration per batch size); "
                          "`nest-ssl tune-batch` prints both")
    n_bins = len(_bins_list(cfg.bucket_duration_bins))
    if n_bins != len(sizes):
        raise ConfigError(f"{key} has {len(sizes)} entries but {section}.bucket_duration_bins has {n_bins}: give one "
                          "batch size per bin (the last bin is the longest cut kept)")
    if cfg.batch_size is not None or cfg.batch_duration is not None:
        log.warning("%s: bucket_batch_size is set, so batch_size=%s and batch_duration=%s are not used", section,
                    cfg.batch_size, cfg.batch_duration)


_KEYS = tuple(f.name for f in fields(DataLoadingConfig))


def _type_error(section: str, err: OmegaConfBaseException) -> ConfigError:
    key = str(err.key) if err.key is not None else ""
    leaf = key.split(".")[0]
    if isinstance(err, ConfigKeyError) or leaf not in _KEYS:
        near = difflib.get_close_matches(leaf, _KEYS, n=1, cutoff=0.6)
        hint = f"; did you mean {section}.{near[0]}?" if near else \
            f"; the keys of {section} are listed in nest_ssl/data/config.py (DataLoadingConfig)"
        return ConfigError(f"{section}.{key}: unknown key{hint}")
    kind, optional = _field_kind(leaf)
    rng = f" {_range_text(leaf)}" if leaf in _RANGES and kind in ("an integer", "a number") else ""
    hint = f"; per-rank/worker randomness comes from {section}.shard_seed" if leaf == "seed" else ""
    return ConfigError(f"{section}.{leaf}={err.value!r}: must be {kind}{rng}" + (" or null" if optional else "") + hint)


def parse_data_config(node: Any, section: str = "train_ds") -> DataLoadingConfig:
    """A ``train_ds`` / ``validation_ds`` section (DictConfig, dict, None or already a DataLoadingConfig) as a
    checked DataLoadingConfig; ``section`` is the dotted name used in messages (e.g. ``model.train_ds``)."""
    if isinstance(node, DataLoadingConfig):
        return node.validate(section)
    if node is None:
        node = {}
    if isinstance(node, (DictConfig, ListConfig)):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:  # an interpolation pointing nowhere
            raise ConfigError(f"{section}: cannot resolve {err.full_key or err.key}: {err}") from None
    if not isinstance(node, dict):
        raise ConfigError(f"{section} must be a mapping of dataset keys, got {node!r}")
    schema = OmegaConf.structured(DataLoadingConfig)
    try:
        merged = OmegaConf.merge(schema, node)
    except (ValidationError, ConfigKeyError) as err:
        raise _type_error(section, err) from None
    if OmegaConf.is_missing(merged, "manifest_filepath"):  # `???` in the yaml, not set on the command line
        merged.manifest_filepath = None
    try:
        cfg = OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        raise ConfigError(f"{section}.{err.key} is ??? (not set); set it, e.g. {section}.{err.key}=...") from None
    assert isinstance(cfg, DataLoadingConfig)
    return cfg.validate(section)
