"""Checks of a training config that need no model, no process group and no run folder: `preflight(cfg, settings)`.

`run()` calls it before it starts a process, builds a model or creates a folder, so that a mistake in the config
(a manifest that is missing, empty, unreadable or a folder; a batch size of "8x"; a learning rate of 0; bucket bins
that decrease; an `init_from_ptl_ckpt` that is a text file) costs a second and leaves nothing behind. Each check
raises a `ConfigError`/`ManifestError`/`CheckpointError` (all `UserError`s) naming the key, the value and the fix.

The checks read only what is cheap: the first line of each manifest, the member list of a .nemo archive, and a
checkpoint's dictionary through a memory map (no tensor data is read). What needs the data itself (every manifest
line, the audio) is still checked where it is read. Two checks read further, only where their answer needs it: a
manifest whose first batch cannot be formed is read in full to say how many of its cuts are usable, and a config
that checkpoints only after validation counts the batches of an epoch (manifest lines, no audio; it stops once the
count decides) to find a run that would never validate and so never checkpoint (checkpoint_schedule.py).
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from nest_ssl.config import ConfigError
from nest_ssl.data.config import DataLoadingConfig, parse_data_config
from nest_ssl.train.trainer_config import RunSettings

# State-dict prefixes of a NESTModel (its submodules); a checkpoint without any of them is foreign.
MODEL_PREFIXES = ("preprocessor.", "encoder.", "quantizer.", "mask_processor.", "decoder.")


@dataclass(frozen=True)
class Rule:
    """One config value: its kind (int, number, bool, prob) and range; None allowed only if allow_none."""

    key: str
    kind: str  # "int" | "number" | "bool"
    minimum: float | None = None
    maximum: float | None = None
    above: bool = False  # minimum is exclusive (> rather than >=)
    below: bool = False  # maximum is exclusive
    allow_none: bool = False


MODEL_RULES = (
    Rule("sample_rate", "int", 1),
    Rule("num_classes", "int", 2, allow_none=True),
    Rule("num_books", "int", 1, allow_none=True),
    Rule("code_dim", "int", 1, allow_none=True),
    Rule("preprocessor.sample_rate", "int", 1, allow_none=True),
    Rule("preprocessor.features", "int", 1, allow_none=True),
    Rule("preprocessor.n_fft", "int", 1, allow_none=True),
    Rule("preprocessor.window_size", "number", 0, above=True, allow_none=True),
    Rule("preprocessor.window_stride", "number", 0, above=True, allow_none=True),
    Rule("masking.block_size", "int", 1, allow_none=True),
    Rule("masking.mask_prob", "number", 0, 1, above=True, allow_none=True),
    Rule("masking.feat_in", "int", 1, allow_none=True),
    Rule("quantizer.feat_in", "int", 1, allow_none=True),
    Rule("quantizer.code_dim", "int", 1, allow_none=True),
    Rule("quantizer.num_books", "int", 1, allow_none=True),
    Rule("quantizer.num_classes", "int", 2, allow_none=True),
    Rule("quantizer.combine_time_steps", "int", 1, allow_none=True),
    Rule("encoder.feat_in", "int", 1, allow_none=True),
    Rule("encoder.n_layers", "int", 1),
    Rule("encoder.d_model", "int", 1),
    Rule("encoder.n_heads", "int", 1, allow_none=True),
    Rule("encoder.subsampling_factor", "int", 1, allow_none=True),
    Rule("encoder.subsampling_conv_channels", "int", 1, allow_none=True),
    Rule("encoder.ff_expansion_factor", "int", 1, allow_none=True),
    Rule("encoder.conv_kernel_size", "int", 1, allow_none=True),
    Rule("encoder.dropout", "number", 0, 1, below=True, allow_none=True),
    Rule("encoder.dropout_pre_encoder", "number", 0, 1, below=True, allow_none=True),
    Rule("encoder.dropout_emb", "number", 0, 1, below=True, allow_none=True),
    Rule("encoder.dropout_att", "number", 0, 1, below=True, allow_none=True),
    Rule("encoder.stochastic_depth_drop_prob", "number", 0, 1, below=True, allow_none=True),
    Rule("decoder.feat_in", "int", 1, allow_none=True),
    Rule("decoder.num_classes", "int", 2, allow_none=True),
    Rule("decoder.num_decoders", "int", 1, allow_none=True),
    Rule("loss.mask_threshold", "number", 0, 1, allow_none=True),
    Rule("loss.combine_time_steps", "int", 1, allow_none=True),
    Rule("optim.lr", "number", 0, above=True),
    Rule("optim.weight_decay", "number", 0, allow_none=True),
    Rule("optim.sched.warmup_steps", "int", 0, allow_none=True),
    Rule("optim.sched.warmup_ratio", "number", 0, 1, allow_none=True),
    Rule("optim.sched.min_lr", "number", 0, allow_none=True),
    Rule("optim.sched.d_model", "int", 1, allow_none=True),
)

def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _lookup(tree: Mapping, dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range_text(rule: Rule) -> str:
    parts = []
    if rule.minimum is not None:
        parts.append(f"{'>' if rule.above else '>='} {rule.minimum:g}")
    if rule.maximum is not None:
        parts.append(f"{'<' if rule.below else '<='} {rule.maximum:g}")
    return " and ".join(parts)


def check_value(section: str, rule: Rule, value: Any) -> None:
    """Raises ConfigError `<section>.<key>=<value>: must be ...` when value breaks the rule."""
    key = f"{section}.{rule.key}"
    if value is None:
        if rule.allow_none:
            return
        raise ConfigError(f"{key} is null; set it (e.g. {key}=...)")
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: must be true or false")
        return
    ok_type = _is_int(value) if rule.kind == "int" else _is_number(value)
    if not ok_type:
        kind = "an integer" if rule.kind == "int" else "a number"
        rng = _range_text(rule)
        raise ConfigError(f"{key}={value!r}: must be {kind}{' ' + rng if rng else ''}"
                          + (" or null" if rule.allow_none else ""))
    low, high = rule.minimum, rule.maximum
    if (low is not None and (value <= low if rule.above else value < low)) or (
            high is not None and (value >= high if rule.below else value > high)):
        raise ConfigError(f"{key}={value!r}: must be {_range_text(rule)}")


def check_rules(section: str, tree: Mapping, rules) -> None:
    for rule in rules:
        present, value = _lookup(tree, rule.key)
        if present:
            check_value(section, rule, value)


# ----------------------------------------------------------------------------------------------------------------
# The model section


def _first(tree: Mapping, *keys: str) -> tuple[str, Any] | None:
    for k in keys:
        present, v = _lookup(tree, k)
        if present and v is not None:
            return k, v
    return None


def check_model(model: Mapping) -> None:
    """Types and ranges of the model keys, and the widths that must agree between modules (which would otherwise
    fail at the first forward pass, minutes into a run)."""
    check_rules("model", model, MODEL_RULES)
    enc = model.get("encoder") if isinstance(model.get("encoder"), Mapping) else {}
    d_model, heads = enc.get("d_model"), enc.get("n_heads")
    if _is_int(d_model) and _is_int(heads) and d_model % heads:
        raise ConfigError(f"model.encoder.d_model={d_model} is not divisible by model.encoder.n_heads={heads}; "
                          "choose n_heads that divides d_model")
    feats = _first(model, "preprocessor.features")
    if feats is not None:
        for key in ("encoder.feat_in", "quantizer.feat_in", "masking.feat_in"):
            present, v = _lookup(model, key)
            if present and v is not None and v != feats[1]:
                raise ConfigError(f"model.{key}={v!r} differs from model.preprocessor.features={feats[1]!r}; "
                                  f"set model.{key}={feats[1]} (or ${{model.preprocessor.features}})")
    feat_out = enc.get("feat_out")
    width = d_model if feat_out in (None, -1) else feat_out
    present, dec_in = _lookup(model, "decoder.feat_in")
    if present and dec_in is not None and _is_int(width) and dec_in != width:
        raise ConfigError(f"model.decoder.feat_in={dec_in!r} differs from the encoder's output width {width} "
                          f"(model.encoder.d_model); set model.decoder.feat_in={width}")
    present, betas = _lookup(model, "optim.betas")
    if present and betas is not None and not (
            isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"model.optim.betas={betas!r}: must be a list of two numbers in [0, 1), e.g. [0.9,0.98]")


# Constructor errors of the modules (NeMo's ValueErrors: "conv_kernel_size must be odd", an unknown optimizer name)
# are user mistakes in a model section; the model is built once on the meta device (no memory, no init) to find them.
_BUILD_ERRORS = (ValueError, TypeError, NotImplementedError)
MODEL_SECTIONS = ("preprocessor", "encoder", "loss", "quantizer", "masking", "decoder")


def check_model_builds(model: DictConfig, max_steps: int) -> None:
    """The model, its optimizer and scheduler can be built from the config: each section on its own (so that the
    message names it), then the whole model; the optimizer over one dummy parameter."""
    import torch

    from nest_ssl.config import instantiate
    from nest_ssl.models.nest import NESTModel, _post_conv_adjusted
    from nest_ssl.optim import build_optimizer, build_scheduler

    model = model.copy()
    OmegaConf.resolve(model)
    adjusted = _post_conv_adjusted(model)
    with torch.device("meta"):
        for key in MODEL_SECTIONS:
            try:
                instantiate(adjusted[key])
            except _BUILD_ERRORS as err:
                raise ConfigError(f"model.{key}: {err}") from None
        try:
            NESTModel(model)
        except _BUILD_ERRORS as err:
            raise ConfigError(f"model: {err}") from None

    optim = model.get("optim")
    if optim is None:
        raise ConfigError("model.optim is missing; it names the optimizer and its lr (e.g. model.optim.name=adamw)")
    sched = optim.get("sched")
    if sched is not None and sched.get("name") == "NoamAnnealing":
        lr, min_lr = optim.get("lr"), sched.get("min_lr") or 0.0
        if _is_number(lr) and _is_number(min_lr) and lr < min_lr:
            raise ConfigError(f"model.optim.lr={lr!r} is below model.optim.sched.min_lr={min_lr!r}: NoamAnnealing's lr "
                              "is a multiplier (the peak is lr / sqrt(d_model * warmup_steps)); raise lr or lower min_lr")
    dummy = [torch.nn.Parameter(torch.zeros(1))]
    try:
        optimizer = build_optimizer(dummy, optim)
    except _BUILD_ERRORS as err:
        raise ConfigError(f"model.optim: {err}") from None
    try:
        build_scheduler(optimizer, sched, max_steps=max_steps if max_steps != -1 else None)
    except _BUILD_ERRORS as err:
        raise ConfigError(f"model.optim.sched: {err}") from None


# ----------------------------------------------------------------------------------------------------------------
# Datasets


def _check_manifests(spec: Any, what: str) -> None:
    from nest_ssl.data.manifests import resolve_parts

    if isinstance(spec, str) and not spec.strip():
        raise ConfigError(f"{what} is an empty string; point it at a manifest")
    resolve_parts(spec, what=what, metadata_only=True)


def check_dataset(section: str, ds: Any, *, model_sample_rate: int | None, training: bool) -> DataLoadingConfig:
    """A train_ds / validation_ds section: keys, types and ranges (nest_ssl.data.config.parse_data_config),
    manifests (and noise / RIR manifests) exist and can be read, augmentation parameters are valid."""
    cfg = parse_data_config(ds, section)
    if cfg.sample_rate is not None and model_sample_rate is not None and cfg.sample_rate != model_sample_rate:
        raise ConfigError(f"{section}.sample_rate={cfg.sample_rate} differs from model.sample_rate="
                          f"{model_sample_rate}; set it to ${{model.sample_rate}} (audio is resampled to the model's "
                          "rate)")
    _check_manifests(cfg.manifest_filepath, f"{section}.manifest_filepath")
    if cfg.noise_manifest not in (None, "", []):
        from nest_ssl.data.noise_bank import check_noise_spec

        check_noise_spec(cfg.noise_manifest, model_sample_rate or 16000, f"{section}.noise_manifest",
                         lambda: _check_manifests(cfg.noise_manifest, f"{section}.noise_manifest"))

    from nest_ssl.data import build_augmentor
    from nest_ssl.data.dataset import ReverbConfig

    try:
        reverb = ReverbConfig.from_config(cfg.reverb)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{section}.reverb: {err}") from None
    if reverb.enabled and reverb.rir_manifest not in (None, ""):
        _check_manifests(reverb.rir_manifest, f"{section}.reverb.rir_manifest")
    try:
        augmentor = build_augmentor(cfg.batch_augmentor)
    except ConfigError as err:
        raise ConfigError(f"{section}.batch_augmentor: {err}") from None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{section}.batch_augmentor: {err}") from None
    from nest_ssl.data.device_augment import check_augment_on

    check_augment_on(cfg.augment_on, augmentor, section)
    return cfg


def _open_training_sampler(section: str, cfg: DataLoadingConfig, sample_rate: int, *, seed: int, rank: int,
                           world_size: int):
    from nest_ssl.data.manifests import open_source
    from nest_ssl.data.sampler import build_sampler

    source = open_source(cfg.manifest_filepath, what=f"{section}.manifest_filepath", sample_rate=sample_rate)
    sampler = build_sampler(source, cfg, section=section, seed=seed, rank=rank, world_size=world_size, training=True)
    sampler._share_reported = True  # the share-of-data warning is for the real epoch, not for these looks
    return source, sampler


def check_first_batch(section: str, cfg: DataLoadingConfig, sample_rate: int) -> None:
    """A manifest too small for one batch (after the duration filter, with drop_last) is found here, before a model
    is built or a folder written, instead of as an empty first epoch. Map-style input only: the sampler reads cuts
    until one batch is full (at most its buffers), which is cheap for manifests; Shar input is read in its workers.
    The message names the manifest file(s) and how many of their cuts are within the duration limits."""
    source, sampler = _open_training_sampler(section, cfg, sample_rate, seed=0, rank=0, world_size=1)
    if sampler.iterable_dataset:
        return
    for _ in sampler:
        return
    from nest_ssl.data.manifests import ManifestSource

    lo, hi = cfg.min_duration, cfg.max_duration
    kept: dict[str, int] = {}
    for part in source.parts:  # per file: which of several manifests holds too little is the user's question
        durations = ManifestSource([part], what=source.what, sample_rate=sample_rate).iter_durations()
        kept[part.path] = sum(1 for d in durations if (lo is None or d >= lo) and (hi is None or d <= hi))
    if len(kept) == 1:
        where = f"{next(iter(kept.values()))} cut(s) in {next(iter(kept))}"
    else:
        where = f"{sum(kept.values())} cut(s) in {len(kept)} manifests (" + ", ".join(
            f"{path}: {n}" for path, n in kept.items()) + ")"
    size = (f"batch_size={cfg.batch_size}" if cfg.batch_size is not None else "") + \
        (f"{' and ' if cfg.batch_size is not None else ''}batch_duration={cfg.batch_duration:g} s"
         if cfg.batch_duration is not None else "")
    lower = "batch_size (or batch_duration)"
    if cfg.bucket_batch_size is not None:
        size, lower = f"bucket_batch_size={cfg.bucket_batch_sizes()}", "bucket_batch_size"
    raise ConfigError(
        f"{section}: the training data is too small for one batch: {where} within min_duration/max_duration, "
        f"{size}, drop_last={str(cfg.drop_last).lower()}; lower {section}.{lower}, set "
        f"{section}.drop_last=false, or add data")


def count_epoch_batches(section: str, cfg: DataLoadingConfig, sample_rate: int, *, seed: int, world_size: int,
                        cap: int) -> int | None:
    """Batches one process (rank 0 of `world_size`) gets in the first epoch, when fewer than `cap`; None when it
    gets `cap` or more, or when the input is iterable (Lhotse Shar: the epoch is formed in the workers). Reads
    the manifest's cuts (no audio) until `cap` batches are formed: about cap x world_size batches' worth of lines.
    Every rank leaves an epoch when one of them has no batch left (the trainer's join), so rank 0's count bounds
    the epoch's length from above."""
    _, sampler = _open_training_sampler(section, cfg, sample_rate, seed=seed, rank=0, world_size=world_size)
    if sampler.iterable_dataset:
        return None
    n = 0
    for _ in sampler:
        n += 1
        if n >= cap:
            return None
    return n


def _world_size(settings: RunSettings) -> int | None:
    """Processes of the run as the launch will make them (None: the launch plan itself is wrong, which run() says
    next)."""
    from nest_ssl.train.distributed import plan_launch

    try:
        return plan_launch(settings.trainer).world_size
    except ConfigError:
        return None


def check_checkpoint_schedule(settings: RunSettings, train_ds: DataLoadingConfig, *, has_validation: bool,
                              sample_rate: int) -> None:
    """A run that would write no checkpoint before it ends (nest_ssl/train/checkpoint_schedule.py) is refused."""
    from nest_ssl.train.checkpoint_schedule import schedule_problem

    def epoch_batches(cap: int) -> int | None:
        world = _world_size(settings)
        if world is None:
            return None
        return count_epoch_batches("model.train_ds", train_ds, sample_rate, seed=settings.nest_trainer.seed,
                                   world_size=world, cap=cap)

    problem = schedule_problem(settings, has_validation=has_validation, epoch_batches=epoch_batches)
    if problem:
        raise ConfigError(problem)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and archives named by the config


def peek_checkpoint(path: str | Path, what: str) -> dict:
    """The top-level dict of a checkpoint, read through a memory map (no tensor data), after the file checks.
    A NeMo checkpoint with pickled objects is accepted unread ({}: it is read, with a warning, when used)."""
    import torch

    from nest_ssl.checkpoint.format import CheckpointError, PickledCheckpointError, check_checkpoint_file, unreadable_error

    p = check_checkpoint_file(path, what)
    with open(p, "rb") as f:
        legacy = f.read(1) == b"\x80"
    if legacy:  # torch's pre-1.6 format cannot be memory-mapped; it is read in full (and checked) when used
        return {}
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        problem = unreadable_error(p, err)
        if isinstance(problem, PickledCheckpointError):
            return {}
        raise CheckpointError(f"{what}={problem}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), Mapping):
        raise CheckpointError(f"{what}={p}: not a model checkpoint (no state_dict); give a .ckpt written by "
                              "nest-ssl, NeMo or Lightning")
    return obj


def check_nemo_archive(path: str | Path, what: str) -> None:
    from nest_ssl.checkpoint.nemo import MODEL_CONFIG_YAML, MODEL_WEIGHTS_CKPT
    from nest_ssl.checkpoint.format import CheckpointError, check_checkpoint_file

    p = check_checkpoint_file(path, what)
    try:
        with tarfile.open(p, "r:*") as tar:
            names = {os.path.basename(m.name) for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, EOFError):
        raise CheckpointError(f"{what}={p}: not a .nemo archive (neither a tar nor a gzipped tar file); give a "
                              ".nemo written by NeMo or `nest-ssl export`") from None
    missing = [n for n in (MODEL_CONFIG_YAML, MODEL_WEIGHTS_CKPT) if n not in names]
    if missing:
        raise CheckpointError(f"{what}={p}: a .nemo archive holds {MODEL_CONFIG_YAML} and {MODEL_WEIGHTS_CKPT}; "
                              f"{', '.join(missing)} missing")


def _init_entries(cfg: Mapping, key: str) -> list[tuple[str, Any]]:
    node = cfg.get(key)
    if isinstance(node, str):
        return [(key, node)]
    if not isinstance(node, Mapping):
        raise ConfigError(f"{key}={node!r}: give a path, or NeMo's form {{name: {{path: ..., include: [...]}}}}")
    entries = []
    for name, entry in node.items():
        if not isinstance(entry, Mapping) or not entry.get("path"):
            raise ConfigError(f"{key}.{name}: each entry needs a `path` (NeMo's form: {{name: {{path: ..., "
                              "include: [...]}}}})")
        entries.append((f"{key}.{name}.path", entry["path"]))
    return entries


def check_init(cfg: Mapping) -> None:
    """init_from_nemo_model / init_from_ptl_ckpt name readable files of the right kind with NEST weights."""
    keys = [k for k in ("init_from_nemo_model", "init_from_ptl_ckpt") if cfg.get(k) is not None]
    if len(keys) > 1:
        raise ConfigError(f"give one of init_from_nemo_model / init_from_ptl_ckpt, not both ({keys})")
    strict = cfg.get("init_strict", True)
    if not isinstance(strict, bool):
        raise ConfigError(f"init_strict={strict!r}: must be true or false")
    for key in keys:
        for where, path in _init_entries(cfg, key):
            if key == "init_from_nemo_model":
                check_nemo_archive(path, where)
                continue
            sd = peek_checkpoint(path, where).get("state_dict")
            if sd is not None and not any(str(k).startswith(MODEL_PREFIXES) for k in sd):
                from nest_ssl.checkpoint.format import CheckpointError

                held = sorted({str(k).split(".")[0] for k in sd})[:8]
                raise CheckpointError(f"{where}={path}: none of its weights belong to a NEST model (it holds: "
                                      f"{', '.join(held) or 'nothing'}); give a checkpoint of nest-ssl or NeMo NEST")


def check_resume(settings: RunSettings) -> None:
    from nest_ssl.checkpoint.format import CheckpointError

    path = settings.exp_manager.resume_from_checkpoint
    if not path:
        return
    obj = peek_checkpoint(path, "exp_manager.resume_from_checkpoint")
    if obj and not (obj.get("optimizer_states") and isinstance(obj.get("nest_ssl"), Mapping)
                    and "loop" in obj["nest_ssl"]):
        raise CheckpointError(f"exp_manager.resume_from_checkpoint={path}: holds weights only (no optimizer or loop "
                              f"state); start from it with +init_from_ptl_ckpt={path} instead")


# ----------------------------------------------------------------------------------------------------------------
# The run folder


def check_run_folder(settings: RunSettings) -> None:
    """The folder a run will write to can be created: no file in its place, a writable folder above it."""
    e = settings.exp_manager
    for key in ("explicit_log_dir", "exp_dir"):
        value = getattr(e, key)
        if not value:
            continue
        p = Path(value)
        if p.exists() and not p.is_dir():
            raise ConfigError(f"exp_manager.{key}={value}: is a file, not a directory; choose another folder")
        parent = p
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ConfigError(f"exp_manager.{key}={value}: {parent} is a file, not a directory; choose another folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ConfigError(f"exp_manager.{key}={value}: permission denied: cannot create or write {parent}; "
                              "choose another folder")
    for src in e.files_to_copy:
        if not isinstance(src, (str, os.PathLike)):
            raise ConfigError(f"exp_manager.files_to_copy: {src!r} is not a path")


# ----------------------------------------------------------------------------------------------------------------


def preflight(cfg: DictConfig | Mapping, settings: RunSettings) -> None:
    """Every check that needs neither a model nor a process: see the module docstring."""
    tree = _plain(cfg)
    model = tree.get("model")
    if not isinstance(model, Mapping):
        raise ConfigError("the config's `model` must be a mapping")
    check_model(model)
    check_model_builds(cfg.model if isinstance(cfg, DictConfig) else OmegaConf.create(model), settings.trainer.max_steps)
    rate = model.get("sample_rate") if _is_int(model.get("sample_rate")) else None
    if "train_ds" not in model or not isinstance(model["train_ds"], Mapping):
        raise ConfigError("model.train_ds is missing; it names the training manifest and batching")
    train_ds = check_dataset("model.train_ds", model["train_ds"], model_sample_rate=rate, training=True)
    check_first_batch("model.train_ds", train_ds, rate or 16000)
    val = model.get("validation_ds")
    has_val = isinstance(val, Mapping) and bool(val.get("manifest_filepath"))
    if has_val:
        check_dataset("model.validation_ds", val, model_sample_rate=rate, training=False)
    check_init(tree)
    check_resume(settings)
    check_run_folder(settings)
    check_checkpoint_schedule(settings, train_ds, sample_rate=rate or 16000,
                              has_validation=has_val and settings.trainer.limit_val_batches not in (0, 0.0))
