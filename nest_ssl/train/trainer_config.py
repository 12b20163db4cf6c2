"""Validation of the `trainer.*` (Lightning's Trainer arguments) and `exp_manager.*` (NeMo's ExpManagerConfig) keys.

Every key Lightning 2.4's `Trainer(...)` or NeMo 2.7.3's `exp_manager` accepts is known here. A key is either
supported (it does what it does in Lightning/NeMo), accepted only at values that change nothing (for example
`create_wandb_logger: false`), or refused with a message that says what to do instead. A key neither knows fails
with the nearest valid key, so a typo never passes silently.

Our own few settings (there is no Lightning or NeMo key for them) live in a top-level `nest_trainer:` section:
`seed`, `max_consecutive_nonfinite` and `health` (the collapse alarm's thresholds, nest_ssl/train/health.py).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from nest_ssl.config import ConfigError
from nest_ssl.train.health import HealthSettings, parse_health

TOP_LEVEL_KEYS = (
    "name",
    "model",
    "trainer",
    "exp_manager",
    "nest_trainer",
    "init_from_nemo_model",
    "init_from_ptl_ckpt",
    "init_from_pretrained_model",
    "init_strict",
)

# Lightning 2.4 Trainer arguments and their defaults.
LIGHTNING_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto",
    "strategy": "auto",
    "devices": "auto",
    "num_nodes": 1,
    "precision": None,
    "logger": None,
    "callbacks": None,
    "fast_dev_run": False,
    "max_epochs": None,
    "min_epochs": None,
    "max_steps": -1,
    "min_steps": None,
    "max_time": None,
    "limit_train_batches": None,
    "limit_val_batches": None,
    "limit_test_batches": None,
    "limit_predict_batches": None,
    "overfit_batches": 0.0,
    "val_check_interval": None,
    "check_val_every_n_epoch": 1,
    "num_sanity_val_steps": None,
    "log_every_n_steps": None,
    "enable_checkpointing": None,
    "enable_progress_bar": None,
    "enable_model_summary": None,
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "gradient_clip_algorithm": None,
    "deterministic": None,
    "benchmark": None,
    "inference_mode": True,
    "use_distributed_sampler": True,
    "profiler": None,
    "detect_anomaly": False,
    "barebones": False,
    "plugins": None,
    "sync_batchnorm": False,
    "reload_dataloaders_every_n_epochs": 0,
    "default_root_dir": None,
}

# Lightning keys we accept only at the value(s) that leave training unchanged, with what to do instead.
TRAINER_FIXED: dict[str, tuple[tuple[Any, ...], str]] = {
    "callbacks": ((None, []), "custom Lightning callbacks do not exist here; the checkpoint callback is exp_manager's"),
    "fast_dev_run": ((False, 0), "for a quick check run trainer.max_steps=2 trainer.limit_val_batches=2"),
    "min_epochs": ((None,), "minimum lengths only matter for early stopping, which nest-ssl does not have"),
    "min_steps": ((None,), "minimum lengths only matter for early stopping, which nest-ssl does not have"),
    "limit_test_batches": ((None, 1.0), "nest-ssl's trainer only fits; there is no test loop"),
    "limit_predict_batches": ((None, 1.0), "nest-ssl's trainer only fits; there is no predict loop"),
    "overfit_batches": ((0, 0.0), "not supported; limit the data with trainer.limit_train_batches instead"),
    "profiler": ((None,), "not supported; run under `python -m torch.utils.bottleneck` or py-spy instead"),
    "barebones": ((False,), "not supported; set enable_progress_bar=false and enable_model_summary=false"),
    "plugins": ((None, []), "Lightning plugins do not exist here"),
    "reload_dataloaders_every_n_epochs": ((0,), "the Lhotse dataloaders re-shuffle every epoch without reloading"),
    "default_root_dir": ((None,), "NeMo's exp_manager decides where runs go: set exp_manager.exp_dir"),
}

EXP_MANAGER_DEFAULTS: dict[str, Any] = {
    "explicit_log_dir": None,
    "exp_dir": None,
    "name": None,
    "version": None,
    "use_datetime_version": True,
    "resume_if_exists": False,
    "resume_past_end": False,
    "resume_ignore_no_checkpoint": False,
    "resume_from_checkpoint": None,
    "create_tensorboard_logger": True,
    "summary_writer_kwargs": None,
    "create_wandb_logger": False,
    "wandb_logger_kwargs": None,
    "create_mlflow_logger": False,
    "mlflow_logger_kwargs": None,
    "create_dllogger_logger": False,
    "dllogger_logger_kwargs": None,
    "create_clearml_logger": False,
    "clearml_logger_kwargs": None,
    "create_neptune_logger": False,
    "neptune_logger_kwargs": None,
    "create_checkpoint_callback": True,
    "checkpoint_callback_params": None,
    "create_early_stopping_callback": False,
    "create_ipl_epoch_stopper_callback": False,
    "early_stopping_callback_params": None,
    "ipl_epoch_stopper_callback_params": None,
    "create_preemption_callback": True,
    "files_to_copy": None,
    "log_step_timing": True,
    "log_delta_step_timing": False,
    "step_timing_kwargs": None,
    "log_local_rank_0_only": False,
    "log_global_rank_0_only": False,
    "disable_validation_on_resume": True,
    "ema": None,
    "max_time_per_run": None,
    "seconds_to_sleep": 5,
    "create_straggler_detection_callback": False,
    "straggler_detection_params": None,
    "create_fault_tolerance_callback": False,
    "fault_tolerance": None,
    "log_tflops_per_sec_per_gpu": True,
}

# exp_manager switches for features nest-ssl does not have: only `false` is accepted. Their `*_kwargs`/params
# sections are accepted with any value while the switch is off, as in NeMo (they are only read when it is on).
EXP_MANAGER_OFF_ONLY = {
    "create_wandb_logger": "wandb_logger_kwargs",
    "create_mlflow_logger": "mlflow_logger_kwargs",
    "create_dllogger_logger": "dllogger_logger_kwargs",
    "create_clearml_logger": "clearml_logger_kwargs",
    "create_neptune_logger": "neptune_logger_kwargs",
    "create_early_stopping_callback": "early_stopping_callback_params",
    "create_ipl_epoch_stopper_callback": "ipl_epoch_stopper_callback_params",
    "create_straggler_detection_callback": "straggler_detection_params",
    "create_fault_tolerance_callback": "fault_tolerance",
}

# NeMo's CallbackParams (the ModelCheckpoint arguments) and their defaults.
CHECKPOINT_DEFAULTS: dict[str, Any] = {
    "filepath": None,
    "dirpath": None,
    "filename": None,
    "monitor": "val_loss",
    "verbose": True,
    "save_last": True,
    "save_top_k": 3,
    "save_weights_only": False,
    "mode": "min",
    "auto_insert_metric_name": True,
    "every_n_epochs": 1,
    "every_n_train_steps": None,
    "train_time_interval": None,
    "prefix": None,
    "postfix": ".nemo",
    "save_best_model": False,
    "always_save_nemo": False,
    "save_nemo_on_train_end": True,
    "model_parallel_size": None,
    "save_on_train_epoch_end": False,
    "async_save": False,
    "save_last_n_optim_states": -1,
    # Lightning ModelCheckpoint arguments NeMo passes through
    "enable_version_counter": True,
}

NEST_TRAINER_DEFAULTS: dict[str, Any] = {
    "seed": 0,  # every random stream (model init, dropout, masking, augmentation, shuffling) derives from it
    "max_consecutive_nonfinite": 10,  # stop after this many optimizer steps in a row had a non-finite loss
    "health": None,  # collapse alarm thresholds: nest_ssl.train.health.HEALTH_DEFAULTS for the keys left out
    "num_threads": None,  # CPU threads of each process (torch.set_num_threads); null: OMP_NUM_THREADS, else torch's
}

PRECISIONS = {
    "32": "32-true",
    "32-true": "32-true",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
}

STRATEGIES = {
    "auto": False,
    "ddp": False,
    "ddp_find_unused_parameters_false": False,
    "ddp_find_unused_parameters_true": True,
}


@dataclass
class TrainerSettings:
    accelerator: str = "auto"  # auto | cpu | gpu
    strategy: str = "auto"
    find_unused_parameters: bool = False
    devices: Any = "auto"  # "auto" | -1 | int | list[int]
    num_nodes: int = 1
    precision: str = "32-true"
    logger: bool | None = None
    max_epochs: int = -1  # -1: no limit
    max_steps: int = -1  # -1: no limit
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    val_check_interval: int | float = 1.0
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    enable_checkpointing: bool = True
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 0.0
    gradient_clip_algorithm: str = "norm"
    deterministic: bool | str = False
    benchmark: bool | None = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    detect_anomaly: bool = False
    sync_batchnorm: bool = False
    max_time: float | None = None  # seconds (Lightning's "DD:HH:MM:SS" or {days, hours, minutes, seconds})


@dataclass
class CheckpointSettings:
    dirpath: str | None = None
    filename: str | None = None
    monitor: str | None = "val_loss"
    verbose: bool = True
    save_top_k: int = 3
    save_weights_only: bool = False
    mode: str = "min"
    auto_insert_metric_name: bool = True
    every_n_epochs: int | None = 1
    every_n_train_steps: int | None = None
    prefix: str | None = None
    postfix: str = ".nemo"
    save_best_model: bool = False
    always_save_nemo: bool = False
    save_nemo_on_train_end: bool = True
    save_on_train_epoch_end: bool = False
    enable_version_counter: bool = True


@dataclass
class ExpManagerSettings:
    explicit_log_dir: str | None = None
    exp_dir: str | None = None
    name: str | None = None
    version: str | None = None
    use_datetime_version: bool = True
    resume_if_exists: bool = False
    resume_past_end: bool = False
    resume_ignore_no_checkpoint: bool = False
    resume_from_checkpoint: str | None = None
    create_tensorboard_logger: bool = True
    summary_writer_kwargs: dict = field(default_factory=dict)
    create_checkpoint_callback: bool = True
    checkpoint: CheckpointSettings = field(default_factory=CheckpointSettings)
    create_preemption_callback: bool = True
    files_to_copy: list = field(default_factory=list)
    log_step_timing: bool = True
    log_local_rank_0_only: bool = False
    log_global_rank_0_only: bool = False
    disable_validation_on_resume: bool = True
    max_time_per_run: float | None = None  # seconds
    seconds_to_sleep: float = 5


@dataclass
class RunSettings:
    trainer: TrainerSettings
    exp_manager: ExpManagerSettings
    seed: int = 0
    max_consecutive_nonfinite: int = 10
    name: str = "default"
    health: HealthSettings = field(default_factory=HealthSettings)
    num_threads: int | None = None  # None: leave torch's thread count (OMP_NUM_THREADS or its default)


# ----------------------------------------------------------------------------------------------------------------


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _unknown(section: str, key: str, known) -> ConfigError:
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f"; did you mean '{section}.{near[0]}'?" if near else ""
    return ConfigError(f"'{section}.{key}' is not a key nest-ssl knows{hint} (see docs/training.md for the list)")


def _bad(section: str, key: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"{section}.{key}={value!r}: {what}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bool(section: str, key: str, v: Any, allow_none: bool = False) -> Any:
    if v is None and allow_none:
        return None
    if not isinstance(v, bool):
        raise _bad(section, key, v, "must be true or false")
    return v


def _int(section: str, key: str, v: Any, minimum: int | None = None, allow_none: bool = False) -> Any:
    if v is None and allow_none:
        return None
    if not _is_int(v) or (minimum is not None and v < minimum):
        rng = f" >= {minimum}" if minimum is not None else ""
        raise _bad(section, key, v, f"must be an integer{rng}" + (" or null" if allow_none else ""))
    return v


def parse_devices(value: Any) -> Any:
    """Lightning's `devices`: 'auto', -1 (every GPU), a count, a list of device indices or a '0,1' string."""
    v = value
    if isinstance(v, str):
        s = v.strip()
        if s == "auto":
            return "auto"
        if "," in s:
            parts = [p for p in s.split(",") if p.strip() != ""]
            try:
                return [int(p) for p in parts]
            except ValueError:
                raise _bad("trainer", "devices", value, "not a list of device indices") from None
        try:
            v = int(s)
        except ValueError:
            raise _bad("trainer", "devices", value, "use 'auto', -1, a count or a list of device indices") from None
    if isinstance(v, (list, tuple)):
        if not v or not all(_is_int(i) and i >= 0 for i in v) or len(set(v)) != len(v):
            raise _bad("trainer", "devices", value, "a device list must hold distinct indices >= 0")
        return list(v)
    if _is_int(v):
        if v == -1 or v >= 1:
            return v
        raise _bad("trainer", "devices", value, "use -1 (every GPU), a count >= 1, or a list of device indices")
    raise _bad("trainer", "devices", value, "use 'auto', -1, a count or a list of device indices")


def parse_trainer(node: Any) -> TrainerSettings:
    raw = _plain(node) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("`trainer` must be a mapping of Lightning Trainer arguments")
    for key in raw:
        if key not in LIGHTNING_DEFAULTS:
            raise _unknown("trainer", key, LIGHTNING_DEFAULTS)
    for key, (allowed, hint) in TRAINER_FIXED.items():
        if key in raw and raw[key] not in allowed:
            raise _bad("trainer", key, raw[key], f"not supported by nest-ssl's trainer: {hint}")
    r = {**LIGHTNING_DEFAULTS, **raw}
    s = TrainerSettings()
    sec = "trainer"

    acc = r["accelerator"]
    if acc == "cuda":
        acc = "gpu"
    if acc not in ("auto", "cpu", "gpu"):
        raise _bad(sec, "accelerator", acc, "choose auto, cpu or gpu (cuda)")
    s.accelerator = acc

    strat = r["strategy"]
    if strat not in STRATEGIES:
        hint = ""
        if isinstance(strat, str) and strat.startswith(("fsdp", "deepspeed")):
            hint = "; sharded training is not supported (the 1B model trains with ddp in bf16-mixed)"
        elif strat == "ddp_spawn":
            hint = "; use ddp: without torchrun nest-ssl starts the processes itself"
        raise _bad(sec, "strategy", strat, f"choose one of {', '.join(STRATEGIES)}{hint}")
    s.strategy = "auto" if strat == "auto" else "ddp"
    s.find_unused_parameters = STRATEGIES[strat]

    s.devices = parse_devices(r["devices"])
    s.num_nodes = _int(sec, "num_nodes", r["num_nodes"], 1)

    prec = r["precision"]
    if prec is None:
        prec = "32"
    key = str(prec)
    if key not in PRECISIONS:
        raise _bad(sec, "precision", prec, f"choose one of 32, 16, 16-mixed, bf16, bf16-mixed")
    s.precision = PRECISIONS[key]

    logger = r["logger"]
    if logger not in (None, True, False):
        raise _bad(sec, "logger", logger, "only true/false/null: the logger comes from exp_manager")
    s.logger = logger

    s.max_steps = _int(sec, "max_steps", r["max_steps"], -1)
    me = r["max_epochs"]
    if me is None:
        me = 1000 if s.max_steps == -1 else -1  # Lightning's rule
    s.max_epochs = _int(sec, "max_epochs", me, -1)

    for key in ("limit_train_batches", "limit_val_batches"):
        v = r[key]
        if v is None:
            v = 1.0
        if _is_int(v) and v >= 0:
            pass
        elif isinstance(v, float) and v in (0.0, 1.0):
            pass
        elif isinstance(v, float) and 0.0 < v < 1.0:
            raise _bad(sec, key, v, "a fraction needs the number of batches per epoch, which the Lhotse sampler "
                       "does not know in advance; give a number of batches")
        else:
            raise _bad(sec, key, v, "give a number of batches (int) or 1.0 (all)")
        if key == "limit_train_batches" and v in (0, 0.0):
            raise _bad(sec, key, v, "training on 0 batches does nothing")
        setattr(s, key, v)

    vci = r["val_check_interval"]
    if vci is None:
        vci = 1.0
    if _is_int(vci):
        if vci < 1:
            raise _bad(sec, "val_check_interval", vci, "an int counts training batches and must be >= 1")
    elif isinstance(vci, float):
        if not 0.0 < vci <= 1.0:
            raise _bad(sec, "val_check_interval", vci, "a float is a fraction of an epoch in (0, 1]")
    else:
        raise _bad(sec, "val_check_interval", vci, "an int (training batches) or a fraction of an epoch")
    s.val_check_interval = vci
    s.check_val_every_n_epoch = _int(sec, "check_val_every_n_epoch", r["check_val_every_n_epoch"], 1, allow_none=True)
    nsv = r["num_sanity_val_steps"]
    s.num_sanity_val_steps = 2 if nsv is None else _int(sec, "num_sanity_val_steps", nsv, -1)
    les = r["log_every_n_steps"]
    s.log_every_n_steps = 50 if les is None else _int(sec, "log_every_n_steps", les, 1)
    for key, default in (("enable_checkpointing", True), ("enable_progress_bar", True), ("enable_model_summary", True)):
        v = r[key]
        setattr(s, key, default if v is None else _bool(sec, key, v))
    s.accumulate_grad_batches = _int(sec, "accumulate_grad_batches", r["accumulate_grad_batches"], 1)
    gcv = r["gradient_clip_val"]
    if gcv is None:
        gcv = 0.0
    if not _is_number(gcv) or gcv < 0:
        raise _bad(sec, "gradient_clip_val", gcv, "must be a number >= 0 (0 or null: no clipping)")
    s.gradient_clip_val = float(gcv)
    gca = r["gradient_clip_algorithm"]
    if gca is None:
        gca = "norm"
    if gca not in ("norm", "value"):
        raise _bad(sec, "gradient_clip_algorithm", gca, "choose norm or value")
    s.gradient_clip_algorithm = gca
    det = r["deterministic"]
    if det not in (None, True, False, "warn"):
        raise _bad(sec, "deterministic", det, "choose true, false or warn")
    s.deterministic = bool(det) if det != "warn" else "warn"
    s.benchmark = _bool(sec, "benchmark", r["benchmark"], allow_none=True)
    s.inference_mode = _bool(sec, "inference_mode", r["inference_mode"])
    s.use_distributed_sampler = _bool(sec, "use_distributed_sampler", r["use_distributed_sampler"])
    s.detect_anomaly = _bool(sec, "detect_anomaly", r["detect_anomaly"])
    s.sync_batchnorm = _bool(sec, "sync_batchnorm", r["sync_batchnorm"])
    if r["max_time"] is not None:
        s.max_time = parse_max_time(r["max_time"])
    return s


_TIMEDELTA_KEYS = ("days", "hours", "minutes", "seconds", "milliseconds", "microseconds", "weeks")


def parse_max_time(value: Any) -> float:
    """Lightning's `max_time`: "DD:HH:MM:SS" or a dict of timedelta arguments ({days: 1, hours: 12}), in seconds."""
    where = "trainer.max_time"
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in _TIMEDELTA_KEYS]
        if unknown or not all(_is_number(v) and v >= 0 for v in value.values()):
            raise _bad("trainer", "max_time", value, f"a dict takes non-negative numbers for {', '.join(_TIMEDELTA_KEYS)}")
        import datetime

        seconds = datetime.timedelta(**{k: float(v) for k, v in value.items()}).total_seconds()
    else:
        seconds = parse_duration(value, where)
    if seconds <= 0:
        raise _bad("trainer", "max_time", value, "must be a positive duration (DD:HH:MM:SS), or null for no limit")
    return seconds


_DURATION = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")


def parse_duration(text: Any, where: str) -> float:
    """NeMo/Lightning's "DD:HH:MM:SS" (or a number of seconds) as seconds."""
    if _is_number(text):
        return float(text)
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ConfigError(f"{where}={text!r}: use DD:HH:MM:SS, e.g. 00:03:50:00")
    d, h, mi, se = (int(x) for x in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + se)


def parse_checkpoint_params(node: Any) -> CheckpointSettings:
    raw = _plain(node) or {}
    sec = "exp_manager.checkpoint_callback_params"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"`{sec}` must be a mapping")
    for key in raw:
        if key not in CHECKPOINT_DEFAULTS:
            raise _unknown(sec, key, CHECKPOINT_DEFAULTS)
    r = {**CHECKPOINT_DEFAULTS, **raw}
    fixed = {
        "filepath": ((None,), "deprecated in NeMo; use dirpath and filename"),
        "train_time_interval": ((None,), "use every_n_train_steps"),
        "model_parallel_size": ((None, 1), "model parallelism is not supported"),
        "async_save": ((False,), "checkpoints are written synchronously (and atomically)"),
        "save_last_n_optim_states": ((-1,), "every checkpoint keeps its optimizer state"),
        "save_last": ((True,), "the last checkpoint is what a restarted run resumes from; it is always written"),
    }
    for key, (allowed, hint) in fixed.items():
        if r[key] not in allowed:
            raise _bad(sec, key, r[key], f"not supported: {hint}")
    c = CheckpointSettings()
    c.dirpath = r["dirpath"]
    c.filename = r["filename"]
    mon = r["monitor"]
    if mon is not None and not isinstance(mon, str):
        raise _bad(sec, "monitor", mon, "name a logged metric (val_loss, train_loss) or null")
    c.monitor = mon
    c.verbose = _bool(sec, "verbose", r["verbose"])
    c.save_top_k = _int(sec, "save_top_k", r["save_top_k"], -1)
    c.save_weights_only = _bool(sec, "save_weights_only", r["save_weights_only"])
    if r["mode"] not in ("min", "max"):
        raise _bad(sec, "mode", r["mode"], "choose min or max")
    c.mode = r["mode"]
    c.auto_insert_metric_name = _bool(sec, "auto_insert_metric_name", r["auto_insert_metric_name"])
    c.every_n_epochs = _int(sec, "every_n_epochs", r["every_n_epochs"], 0, allow_none=True)
    c.every_n_train_steps = _int(sec, "every_n_train_steps", r["every_n_train_steps"], 0, allow_none=True)
    c.prefix = r["prefix"]
    c.postfix = str(r["postfix"])
    for key in ("save_best_model", "always_save_nemo", "save_nemo_on_train_end", "save_on_train_epoch_end",
                "enable_version_counter"):
        setattr(c, key, _bool(sec, key, r[key]))
    return c


def parse_exp_manager(node: Any) -> ExpManagerSettings:
    raw = _plain(node) or {}
    sec = "exp_manager"
    if not isinstance(raw, Mapping):
        raise ConfigError("`exp_manager` must be a mapping of NeMo exp_manager keys")
    for key in raw:
        if key not in EXP_MANAGER_DEFAULTS:
            raise _unknown(sec, key, EXP_MANAGER_DEFAULTS)
    r = {**EXP_MANAGER_DEFAULTS, **raw}
    for switch in EXP_MANAGER_OFF_ONLY:
        if r[switch] not in (False, None):
            raise _bad(sec, switch, r[switch], "not available in nest-ssl (TensorBoard is the logger; no callbacks)")
    ema = r["ema"]
    if ema not in (None, {}) and (not isinstance(ema, Mapping) or ema.get("enable", False)):
        raise _bad(sec, "ema", ema, "EMA of the weights is not supported")
    if r["log_delta_step_timing"] not in (False, None):
        raise _bad(sec, "log_delta_step_timing", r["log_delta_step_timing"], "not supported; step time is logged as step_time")
    if r["step_timing_kwargs"] not in (None, {}):
        raise _bad(sec, "step_timing_kwargs", r["step_timing_kwargs"], "not supported")
    # NeMo's default is true, but only an explicit request is refused: the default is NeMo's, not the user's.
    if raw.get("log_tflops_per_sec_per_gpu") not in (None, False):
        raise _bad(sec, "log_tflops_per_sec_per_gpu", True, "TFLOPs are not measured; throughput is logged in "
                   "audio seconds per second (throughput) instead")
    e = ExpManagerSettings()
    for key in ("explicit_log_dir", "exp_dir", "name", "version", "resume_from_checkpoint"):
        v = r[key]
        if v is not None and not isinstance(v, (str, int)):
            raise _bad(sec, key, v, "must be a string or null")
        setattr(e, key, None if v is None else str(v))
    for key in ("use_datetime_version", "resume_if_exists", "resume_past_end", "resume_ignore_no_checkpoint",
                "create_tensorboard_logger", "create_checkpoint_callback", "create_preemption_callback",
                "log_step_timing", "log_local_rank_0_only", "log_global_rank_0_only",
                "disable_validation_on_resume"):
        setattr(e, key, _bool(sec, key, r[key]))
    swk = r["summary_writer_kwargs"]
    if swk is not None and not isinstance(swk, Mapping):
        raise _bad(sec, "summary_writer_kwargs", swk, "must be a mapping of SummaryWriter arguments")
    e.summary_writer_kwargs = dict(swk or {})
    ftc = r["files_to_copy"]
    if ftc is not None and not isinstance(ftc, (list, tuple)):
        raise _bad(sec, "files_to_copy", ftc, "must be a list of paths")
    e.files_to_copy = list(ftc or [])
    e.checkpoint = parse_checkpoint_params(r["checkpoint_callback_params"])
    if r["max_time_per_run"] is not None:
        e.max_time_per_run = parse_duration(r["max_time_per_run"], "exp_manager.max_time_per_run")
    sts = r["seconds_to_sleep"]
    if not _is_number(sts) or sts < 0:
        raise _bad(sec, "seconds_to_sleep", sts, "must be a number of seconds >= 0")
    e.seconds_to_sleep = float(sts)
    return e


def parse_nest_trainer(node: Any) -> dict:
    raw = _plain(node) or {}
    if not isinstance(raw, Mapping):
        raise ConfigError("`nest_trainer` must be a mapping")
    for key in raw:
        if key not in NEST_TRAINER_DEFAULTS:
            raise _unknown("nest_trainer", key, NEST_TRAINER_DEFAULTS)
    r = {**NEST_TRAINER_DEFAULTS, **raw}
    _int("nest_trainer", "seed", r["seed"], 0)
    _int("nest_trainer", "max_consecutive_nonfinite", r["max_consecutive_nonfinite"], 1)
    r["health"] = parse_health(r["health"])
    _int("nest_trainer", "num_threads", r["num_threads"], 1, allow_none=True)
    return r


def parse_run_config(cfg: DictConfig | Mapping) -> RunSettings:
    """Checks the whole run config (top-level keys, trainer, exp_manager, nest_trainer) before anything starts."""
    keys = list(cfg.keys())
    for key in keys:
        if key not in TOP_LEVEL_KEYS:
            near = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"top-level key '{key}' is not one nest-ssl knows{hint} (known: {', '.join(TOP_LEVEL_KEYS)})")
    if cfg.get("model") is None:
        raise ConfigError("the config has no `model` section")
    if cfg.get("init_from_pretrained_model") is not None:
        raise ConfigError(
            "init_from_pretrained_model downloads from NGC/Hugging Face, which nest-ssl does not do: download the "
            ".nemo file and use init_from_nemo_model=PATH (or `nest-ssl import-nemo IN.nemo OUT.ckpt`)"
        )
    trainer = parse_trainer(cfg.get("trainer"))
    exp = parse_exp_manager(cfg.get("exp_manager"))
    nest = parse_nest_trainer(cfg.get("nest_trainer"))
    name = cfg.get("name") or "default"

    # NeMo's exp_manager refuses a Lightning logger / checkpoint callback next to its own ones.
    if trainer.logger is True and exp.create_tensorboard_logger:
        raise ConfigError(
            "trainer.logger=true and exp_manager.create_tensorboard_logger=true: exp_manager creates the logger, "
            "so set trainer.logger=false (as NeMo requires)"
        )
    if trainer.enable_checkpointing and exp.create_checkpoint_callback:
        raise ConfigError(
            "trainer.enable_checkpointing=true and exp_manager.create_checkpoint_callback=true: exp_manager creates "
            "the checkpoint callback, so set trainer.enable_checkpointing=false (as NeMo requires)"
        )
    if trainer.enable_checkpointing and not exp.create_checkpoint_callback:
        # Lightning's own default ModelCheckpoint: the newest checkpoint after every epoch, no monitor.
        exp.create_checkpoint_callback = True
        exp.checkpoint = CheckpointSettings(monitor=None, save_top_k=1, filename="{epoch}-{step}",
                                            save_nemo_on_train_end=False)
    if trainer.logger is True and not exp.create_tensorboard_logger:
        exp.create_tensorboard_logger = True  # Lightning's default logger is TensorBoard
    if trainer.max_time is not None:
        # Lightning stops at max_time, NeMo's exp_manager at max_time_per_run (checkpointing in both); the trainer
        # implements the latter, so the earlier of the two is the limit.
        limits = [t for t in (exp.max_time_per_run, trainer.max_time) if t is not None]
        exp.max_time_per_run = min(limits)
    return RunSettings(
        trainer=trainer,
        exp_manager=exp,
        seed=int(nest["seed"]),
        max_consecutive_nonfinite=int(nest["max_consecutive_nonfinite"]),
        name=str(exp.name or name),
        health=nest["health"],
        num_threads=nest["num_threads"],
    )
