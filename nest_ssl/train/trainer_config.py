"""The trainer-side config sections: `trainer.*` (Lightning's Trainer arguments), `exp_manager.*` (NeMo's
ExpManagerConfig, with `checkpoint_callback_params`) and our own `nest_trainer.*` (with `health`).

Each section is one dataclass whose fields are the keys Lightning 2.4 / NeMo 2.7.3 accept there and whose defaults
are what a key left out means (the only copy of them). `parse_section` merges the user's section onto
`OmegaConf.structured(Section)`, so OmegaConf refuses unknown keys and values of the wrong type, then calls the
section's `validate()`, which checks ranges and mutually exclusive keys and brings Lightning's alternative spellings
to one form (precision 16 -> "16-mixed", max_time "DD:HH:MM:SS" -> seconds). OmegaConf's errors become one
`ConfigError` naming `<section>.<key>`, the value and the fix (the nearest key for a typo).

A key is either supported (it does what it does in Lightning/NeMo), accepted only at values that change nothing
(for example `create_wandb_logger: false`), or refused with a message that says what to do instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from nest_ssl.config import ConfigError, nearest_key
from nest_ssl.train.compile import CompileSettings
from nest_ssl.train.health import HealthSettings

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

PRECISIONS = {
    "32": "32-true",
    "32-true": "32-true",
    "16": "16-mixed",
    "16-mixed": "16-mixed",
    "bf16": "bf16-mixed",
    "bf16-mixed": "bf16-mixed",
}

STRATEGIES = {  # strategy -> find_unused_parameters
    "auto": False,
    "ddp": False,
    "ddp_find_unused_parameters_false": False,
    "ddp_find_unused_parameters_true": True,
}

_TIMEDELTA_KEYS = ("days", "hours", "minutes", "seconds", "milliseconds", "microseconds", "weeks")
_DURATION = re.compile(r"^(\d+):(\d+):(\d+):(\d+)$")


def _bad(where: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"{where}={value!r}: {what}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _at_least(where: str, value: int | None, minimum: int, *, null: bool = False) -> None:
    """Range check of an int field (OmegaConf has checked the type)."""
    if value is None and null:
        return
    if value is None or value < minimum:
        raise _bad(where, value, f"must be an integer >= {minimum}" + (" or null" if null else ""))


def _refuse_fixed(where: str, section: Any, fixed: Mapping[str, tuple[tuple[Any, ...], str]], what: str) -> None:
    """Keys accepted only at the values that leave training unchanged."""
    for key, (allowed, hint) in fixed.items():
        value = getattr(section, key)
        if value not in allowed:
            raise _bad(f"{where}.{key}", value, f"{what}: {hint}")


def _default(section: Any, key: str) -> Any:
    f = next(f for f in dataclasses.fields(section) if f.name == key)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _nulls_to_defaults(section: Any, keys: tuple[str, ...]) -> None:
    """Lightning's `key: null` means its default, which is the field's default here."""
    for key in keys:
        if getattr(section, key) is None:
            setattr(section, key, _default(section, key))


def parse_duration(text: Any, where: str) -> float:
    """NeMo/Lightning's "DD:HH:MM:SS" (or a number of seconds) as seconds."""
    if _is_number(text):
        return float(text)
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ConfigError(f"{where}={text!r}: use DD:HH:MM:SS, e.g. 00:03:50:00")
    d, h, mi, se = (int(x) for x in m.groups())
    return float(((d * 24 + h) * 60 + mi) * 60 + se)


def parse_max_time(value: Any) -> float:
    """Lightning's `max_time`: "DD:HH:MM:SS" or a dict of timedelta arguments ({days: 1, hours: 12}), in seconds."""
    where = "trainer.max_time"
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in _TIMEDELTA_KEYS]
        if unknown or not all(_is_number(v) and v >= 0 for v in value.values()):
            raise _bad(where, value, f"a dict takes non-negative numbers for {', '.join(_TIMEDELTA_KEYS)}")
        seconds = datetime.timedelta(**{k: float(v) for k, v in value.items()}).total_seconds()
    else:
        seconds = parse_duration(value, where)
    if seconds <= 0:
        raise _bad(where, value, "must be a positive duration (DD:HH:MM:SS), or null for no limit")
    return seconds


def parse_devices(value: Any) -> Any:
    """Lightning's `devices`: 'auto', -1 (every GPU), a count, a list of device indices or a '0,1' string."""
    where = "trainer.devices"
    v = value
    if isinstance(v, str):
        s = v.strip()
        if s == "auto":
            return "auto"
        if "," in s:
            try:
                return [int(p) for p in s.split(",") if p.strip() != ""]
            except ValueError:
                raise _bad(where, value, "not a list of device indices") from None
        try:
            v = int(s)
        except ValueError:
            raise _bad(where, value, "use 'auto', -1, a count or a list of device indices") from None
    if isinstance(v, (list, tuple)):
        if not v or not all(_is_int(i) and i >= 0 for i in v) or len(set(v)) != len(v):
            raise _bad(where, value, "a device list must hold distinct indices >= 0")
        return list(v)
    if _is_int(v):
        if v == -1 or v >= 1:
            return v
        raise _bad(where, value, "use -1 (every GPU), a count >= 1, or a list of device indices")
    raise _bad(where, value, "use 'auto', -1, a count or a list of device indices")


def _batch_limit(where: str, value: Any) -> int | float:
    if _is_int(value) and value >= 0:
        return value
    if isinstance(value, float) and value in (0.0, 1.0):
        return value
    if isinstance(value, float) and 0.0 < value < 1.0:
        raise _bad(where, value, "a fraction needs the number of batches per epoch, which the Lhotse sampler does not "
                   "know in advance; give a number of batches")
    raise _bad(where, value, "give a number of batches (int) or 1.0 (all)")


# ----------------------------------------------------------------------------------------------------------------
# trainer


@dataclass
class TrainerSettings:
    """`trainer`: Lightning 2.4's Trainer arguments. `Any` fields take more than one type (as in Lightning) and are
    checked by validate(); after it, every field holds the one form the trainer reads (noted per field)."""

    accelerator: str = "auto"  # auto | cpu | gpu (cuda is read as gpu)
    strategy: str = "auto"  # auto | ddp | ddp_find_unused_parameters_{true,false}
    devices: Any = "auto"  # -> "auto" | -1 | count | list of indices
    num_nodes: int = 1
    precision: Any = "32-true"  # -> 32-true | 16-mixed | bf16-mixed
    logger: Optional[bool] = None  # exp_manager creates the logger
    callbacks: Any = None
    fast_dev_run: Any = False
    max_epochs: Optional[int] = None  # -> int; -1: no limit (null: 1000 without max_steps, else no limit)
    min_epochs: Optional[int] = None
    max_steps: int = -1  # -1: no limit
    min_steps: Optional[int] = None
    max_time: Any = None  # -> seconds or None ("DD:HH:MM:SS" or {days, hours, minutes, seconds})
    limit_train_batches: Any = 1.0  # -> int (batches) or 1.0 (all)
    limit_val_batches: Any = 1.0
    limit_test_batches: Any = None
    limit_predict_batches: Any = None
    overfit_batches: Any = 0.0
    val_check_interval: Any = 1.0  # int: training batches; float: fraction of an epoch
    check_val_every_n_epoch: Optional[int] = 1
    num_sanity_val_steps: Optional[int] = 2
    log_every_n_steps: Optional[int] = 50
    enable_checkpointing: Optional[bool] = True
    enable_progress_bar: Optional[bool] = True
    enable_model_summary: Optional[bool] = True
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = 0.0  # 0: no clipping
    gradient_clip_algorithm: Optional[str] = "norm"  # norm | value
    deterministic: Any = False  # true | false | "warn"
    benchmark: Optional[bool] = None
    inference_mode: bool = True
    use_distributed_sampler: bool = True
    profiler: Any = None
    detect_anomaly: bool = False
    barebones: bool = False
    plugins: Any = None
    sync_batchnorm: bool = False
    reload_dataloaders_every_n_epochs: int = 0
    default_root_dir: Optional[str] = None

    # Lightning keys accepted only at the value(s) that leave training unchanged, with what to do instead.
    FIXED: typing.ClassVar[dict[str, tuple[tuple[Any, ...], str]]] = {
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
    NULL_MEANS_DEFAULT: typing.ClassVar[tuple[str, ...]] = (
        "precision", "limit_train_batches", "limit_val_batches", "val_check_interval", "num_sanity_val_steps",
        "log_every_n_steps", "enable_checkpointing", "enable_progress_bar", "enable_model_summary",
        "gradient_clip_val", "gradient_clip_algorithm", "deterministic",
    )

    @property
    def find_unused_parameters(self) -> bool:
        return STRATEGIES[self.strategy]

    def validate(self, where: str = "trainer") -> None:
        _refuse_fixed(where, self, self.FIXED, "not supported by nest-ssl's trainer")
        _nulls_to_defaults(self, self.NULL_MEANS_DEFAULT)

        if self.accelerator == "cuda":
            self.accelerator = "gpu"
        if self.accelerator not in ("auto", "cpu", "gpu"):
            raise _bad(f"{where}.accelerator", self.accelerator, "choose auto, cpu or gpu (cuda)")
        if self.strategy not in STRATEGIES:
            hint = ""
            if self.strategy.startswith(("fsdp", "deepspeed")):
                hint = "; sharded training is not supported (the 1B model trains with ddp in bf16-mixed)"
            elif self.strategy == "ddp_spawn":
                hint = "; use ddp: without torchrun nest-ssl starts the processes itself"
            raise _bad(f"{where}.strategy", self.strategy, f"choose one of {', '.join(STRATEGIES)}{hint}")
        self.devices = parse_devices(self.devices)
        _at_least(f"{where}.num_nodes", self.num_nodes, 1)
        if str(self.precision) not in PRECISIONS:
            raise _bad(f"{where}.precision", self.precision, "choose one of 32, 16, 16-mixed, bf16, bf16-mixed")
        self.precision = PRECISIONS[str(self.precision)]

        _at_least(f"{where}.max_steps", self.max_steps, -1)
        if self.max_epochs is None:
            self.max_epochs = 1000 if self.max_steps == -1 else -1  # Lightning's rule
        _at_least(f"{where}.max_epochs", self.max_epochs, -1)
        if self.max_time is not None:
            self.max_time = parse_max_time(self.max_time)

        self.limit_train_batches = _batch_limit(f"{where}.limit_train_batches", self.limit_train_batches)
        if self.limit_train_batches in (0, 0.0):
            raise _bad(f"{where}.limit_train_batches", self.limit_train_batches, "training on 0 batches does nothing")
        self.limit_val_batches = _batch_limit(f"{where}.limit_val_batches", self.limit_val_batches)

        vci = self.val_check_interval
        if _is_int(vci):
            if vci < 1:
                raise _bad(f"{where}.val_check_interval", vci, "an int counts training batches and must be >= 1")
        elif isinstance(vci, float):
            if not 0.0 < vci <= 1.0:
                raise _bad(f"{where}.val_check_interval", vci, "a float is a fraction of an epoch in (0, 1]")
        else:
            raise _bad(f"{where}.val_check_interval", vci, "an int (training batches) or a fraction of an epoch")
        _at_least(f"{where}.check_val_every_n_epoch", self.check_val_every_n_epoch, 1, null=True)
        _at_least(f"{where}.num_sanity_val_steps", self.num_sanity_val_steps, -1)
        _at_least(f"{where}.log_every_n_steps", self.log_every_n_steps, 1)
        _at_least(f"{where}.accumulate_grad_batches", self.accumulate_grad_batches, 1)
        if not self.gradient_clip_val >= 0:  # also NaN
            raise _bad(f"{where}.gradient_clip_val", self.gradient_clip_val, "must be a number >= 0 (0 or null: no clipping)")
        if self.gradient_clip_algorithm not in ("norm", "value"):
            raise _bad(f"{where}.gradient_clip_algorithm", self.gradient_clip_algorithm, "choose norm or value")
        if self.deterministic not in (True, False, "warn"):
            raise _bad(f"{where}.deterministic", self.deterministic, "choose true, false or warn")


# ----------------------------------------------------------------------------------------------------------------
# exp_manager


@dataclass
class CheckpointSettings:
    """`exp_manager.checkpoint_callback_params`: NeMo's CallbackParams (Lightning's ModelCheckpoint arguments)."""

    filepath: Optional[str] = None
    dirpath: Optional[str] = None
    filename: Optional[str] = None
    monitor: Optional[str] = "val_loss"
    verbose: bool = True
    save_last: Optional[bool] = True
    save_top_k: int = 3
    save_weights_only: bool = False
    mode: str = "min"
    auto_insert_metric_name: bool = True
    every_n_epochs: Optional[int] = 1
    every_n_train_steps: Optional[int] = None
    train_time_interval: Any = None
    prefix: Optional[str] = None
    postfix: str = ".nemo"
    save_best_model: bool = False
    always_save_nemo: bool = False
    save_nemo_on_train_end: bool = True
    model_parallel_size: Optional[int] = None
    save_on_train_epoch_end: bool = False
    async_save: bool = False
    save_last_n_optim_states: int = -1
    enable_version_counter: bool = True  # a Lightning ModelCheckpoint argument NeMo passes through

    FIXED: typing.ClassVar[dict[str, tuple[tuple[Any, ...], str]]] = {
        "filepath": ((None,), "deprecated in NeMo; use dirpath and filename"),
        "train_time_interval": ((None,), "use every_n_train_steps"),
        "model_parallel_size": ((None, 1), "model parallelism is not supported"),
        "async_save": ((False,), "checkpoints are written synchronously (and atomically)"),
        "save_last_n_optim_states": ((-1,), "every checkpoint keeps its optimizer state"),
        "save_last": ((True,), "the last checkpoint is what a restarted run resumes from; it is always written"),
    }

    def validate(self, where: str = "exp_manager.checkpoint_callback_params") -> None:
        _refuse_fixed(where, self, self.FIXED, "not supported")
        _at_least(f"{where}.save_top_k", self.save_top_k, -1)
        if self.mode not in ("min", "max"):
            raise _bad(f"{where}.mode", self.mode, "choose min or max")
        _at_least(f"{where}.every_n_epochs", self.every_n_epochs, 0, null=True)
        _at_least(f"{where}.every_n_train_steps", self.every_n_train_steps, 0, null=True)


@dataclass
class ExpManagerSettings:
    """`exp_manager`: NeMo 2.7.3's ExpManagerConfig. Switches for features nest-ssl does not have are accepted only
    off; their `*_kwargs` / params sections take any value then, as in NeMo (they are only read when it is on)."""

    explicit_log_dir: Optional[str] = None
    exp_dir: Optional[str] = None  # None: ./nemo_experiments
    name: Optional[str] = None
    version: Optional[str] = None
    use_datetime_version: bool = True
    resume_if_exists: bool = False
    resume_past_end: bool = False
    resume_ignore_no_checkpoint: bool = False
    resume_from_checkpoint: Optional[str] = None
    create_tensorboard_logger: bool = True
    summary_writer_kwargs: Optional[Dict[str, Any]] = field(default_factory=dict)
    create_wandb_logger: Optional[bool] = False
    wandb_logger_kwargs: Any = None
    create_mlflow_logger: Optional[bool] = False
    mlflow_logger_kwargs: Any = None
    create_dllogger_logger: Optional[bool] = False
    dllogger_logger_kwargs: Any = None
    create_clearml_logger: Optional[bool] = False
    clearml_logger_kwargs: Any = None
    create_neptune_logger: Optional[bool] = False
    neptune_logger_kwargs: Any = None
    create_checkpoint_callback: bool = True
    checkpoint_callback_params: Optional[CheckpointSettings] = field(default_factory=CheckpointSettings)
    create_early_stopping_callback: Optional[bool] = False
    create_ipl_epoch_stopper_callback: Optional[bool] = False
    early_stopping_callback_params: Any = None
    ipl_epoch_stopper_callback_params: Any = None
    create_preemption_callback: bool = True
    files_to_copy: Optional[List[str]] = field(default_factory=list)
    log_step_timing: bool = True
    log_delta_step_timing: Optional[bool] = False
    step_timing_kwargs: Any = None
    log_local_rank_0_only: bool = False
    log_global_rank_0_only: bool = False
    disable_validation_on_resume: bool = True
    ema: Any = None
    max_time_per_run: Any = None  # -> seconds or None ("DD:HH:MM:SS")
    seconds_to_sleep: float = 5.0
    create_straggler_detection_callback: Optional[bool] = False
    straggler_detection_params: Any = None
    create_fault_tolerance_callback: Optional[bool] = False
    fault_tolerance: Any = None
    # NeMo logs TFLOPs by default; nest-ssl measures throughput in audio seconds per second instead, so only an
    # explicit `true` is refused.
    log_tflops_per_sec_per_gpu: Optional[bool] = None

    OFF_ONLY: typing.ClassVar[tuple[str, ...]] = (
        "create_wandb_logger", "create_mlflow_logger", "create_dllogger_logger", "create_clearml_logger",
        "create_neptune_logger", "create_early_stopping_callback", "create_ipl_epoch_stopper_callback",
        "create_straggler_detection_callback", "create_fault_tolerance_callback",
    )

    @property
    def checkpoint(self) -> CheckpointSettings:
        """The checkpoint callback's settings (checkpoint_callback_params, always set after validate())."""
        return self.checkpoint_callback_params

    def validate(self, where: str = "exp_manager") -> None:
        for switch in self.OFF_ONLY:
            if getattr(self, switch):
                raise _bad(f"{where}.{switch}", getattr(self, switch),
                           "not available in nest-ssl (TensorBoard is the logger; no callbacks)")
        if self.ema not in (None, {}) and (not isinstance(self.ema, Mapping) or self.ema.get("enable", False)):
            raise _bad(f"{where}.ema", self.ema, "EMA of the weights is not supported")
        if self.log_delta_step_timing:
            raise _bad(f"{where}.log_delta_step_timing", True, "not supported; step time is logged as step_time")
        if self.step_timing_kwargs not in (None, {}):
            raise _bad(f"{where}.step_timing_kwargs", self.step_timing_kwargs, "not supported")
        _nulls_to_defaults(self, ("summary_writer_kwargs", "files_to_copy", "checkpoint_callback_params"))
        self.checkpoint_callback_params.validate(f"{where}.checkpoint_callback_params")
        if self.max_time_per_run is not None:
            self.max_time_per_run = parse_duration(self.max_time_per_run, f"{where}.max_time_per_run")
        if not self.seconds_to_sleep >= 0:
            raise _bad(f"{where}.seconds_to_sleep", self.seconds_to_sleep, "must be a number of seconds >= 0")


# ----------------------------------------------------------------------------------------------------------------
# nest_trainer: our own settings (there is no Lightning or NeMo key for them)


@dataclass
class PreemptionSettings:
    """`nest_trainer.preemption`: the stop on SIGTERM / SIGUSR1 (with exp_manager.create_preemption_callback)."""

    # Seconds from the signal by which the stop is over: less than the launcher's grace before its SIGKILL (torchrun
    # 30 s, SLURM's KillWait 30 s by default). The last checkpoint is written first whatever the time; validation,
    # top-k and .nemo follow only while the time left covers them. 0: the last checkpoint only.
    save_deadline_s: float = 20.0

    def validate(self, where: str = "nest_trainer.preemption") -> None:
        if not 0 <= self.save_deadline_s < float("inf"):  # also NaN
            raise _bad(f"{where}.save_deadline_s", self.save_deadline_s, "must be a number of seconds >= 0")


@dataclass
class NestTrainerSettings:
    seed: int = 0  # every random stream (model init, dropout, masking, augmentation, shuffling) derives from it
    max_consecutive_nonfinite: int = 10  # stop after this many optimizer steps in a row had a non-finite loss
    health: Optional[HealthSettings] = field(default_factory=HealthSettings)  # the collapse alarm's thresholds
    num_threads: Optional[int] = None  # CPU threads of each process (torch.set_num_threads); null: torch's choice
    preemption: Optional[PreemptionSettings] = field(default_factory=PreemptionSettings)  # SIGTERM / SIGUSR1
    compile: Optional[CompileSettings] = field(default_factory=CompileSettings)  # torch.compile (train/compile.py)

    def validate(self, where: str = "nest_trainer") -> None:
        _at_least(f"{where}.seed", self.seed, 0)
        _at_least(f"{where}.max_consecutive_nonfinite", self.max_consecutive_nonfinite, 1)
        _at_least(f"{where}.num_threads", self.num_threads, 1, null=True)
        _nulls_to_defaults(self, ("health", "preemption", "compile"))
        self.health.validate(f"{where}.health")
        self.preemption.validate(f"{where}.preemption")
        self.compile.validate(f"{where}.compile")


@dataclass
class RunSettings:
    """The checked trainer-side sections of a run config: what run() and the Trainer read."""

    trainer: TrainerSettings
    exp_manager: ExpManagerSettings
    nest_trainer: NestTrainerSettings
    name: str = "default"


# ----------------------------------------------------------------------------------------------------------------
# Parsing


Section = TypeVar("Section")


def _describe_type(hint: Any) -> str:
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(hint) or hint
    kinds = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
             dict: "a mapping"}
    kind = kinds.get(origin)
    if kind is None and dataclasses.is_dataclass(origin):
        kind = f"a mapping of {', '.join(f.name for f in dataclasses.fields(origin))}"
    kind = kind or "another value"
    if optional:
        kind = "true, false or null" if origin is bool else f"{kind} or null"
    return kind


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def _translate(err: OmegaConfBaseException, schema: type, where: str) -> ConfigError:
    """OmegaConf's merge error -> our one-line ConfigError naming `<where>.<key>`."""
    full = f"{where}.{err.full_key}" if err.full_key else where
    owner = err.object_type if dataclasses.is_dataclass(err.object_type) else schema
    if isinstance(err, ConfigKeyError) and err.key is not None:
        near = nearest_key(OmegaConf.structured(owner), str(err.key))
        parent = full.rpartition(".")[0]
        hint = f"; did you mean '{parent}.{near}'?" if near else ""
        return ConfigError(f"'{full}' is not a key nest-ssl knows{hint} (see docs/training.md for the list)")
    hints = typing.get_type_hints(owner)
    if err.key is not None and str(err.key) in hints:
        return ConfigError(f"{full}={_plain(err.value)!r}: must be {_describe_type(hints[str(err.key)])}")
    return ConfigError(f"{full}: {err.msg.splitlines()[0]}")


def _check_mappings(schema: type, user: Any, where: str) -> None:
    """A nested section given as a scalar or list: OmegaConf's merge error would not name the key."""
    if user is None:
        return
    if not isinstance(user, Mapping):
        raise ConfigError(f"`{where}` must be a mapping (key: value), got {user!r}")
    hints = typing.get_type_hints(schema)
    for key, value in user.items():
        hint = hints.get(str(key))
        if typing.get_origin(hint) is typing.Union:
            hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if dataclasses.is_dataclass(hint):
            _check_mappings(hint, value, f"{where}.{key}")


def parse_section(schema: type[Section], node: Any, where: str) -> Section:
    """The user's section (a mapping, or None for all defaults) as a checked `schema` object: unknown keys and
    values of the wrong type are refused by OmegaConf, ranges and combinations by `schema.validate()`."""
    user = _plain(node)
    _check_mappings(schema, user, where)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(dict(user or {})))
        section = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise _translate(err, schema, where) from None
    section.validate(where)
    return section


def parse_trainer(node: Any) -> TrainerSettings:
    return parse_section(TrainerSettings, node, "trainer")


def parse_exp_manager(node: Any) -> ExpManagerSettings:
    return parse_section(ExpManagerSettings, node, "exp_manager")


def parse_nest_trainer(node: Any) -> NestTrainerSettings:
    return parse_section(NestTrainerSettings, node, "nest_trainer")


def _check_top_level(cfg: DictConfig | Mapping) -> None:
    for key in cfg.keys():
        if key not in TOP_LEVEL_KEYS:
            near = nearest_key(OmegaConf.create({k: None for k in TOP_LEVEL_KEYS}), str(key))
            hint = f"; did you mean '{near}'?" if near else ""
            raise ConfigError(f"top-level key '{key}' is not one nest-ssl knows{hint} (known: {', '.join(TOP_LEVEL_KEYS)})")
    if cfg.get("model") is None:
        raise ConfigError("the config has no `model` section")
    if cfg.get("init_from_pretrained_model") is not None:
        raise ConfigError(
            "init_from_pretrained_model downloads from NGC/Hugging Face, which nest-ssl does not do: download the "
            ".nemo file and use init_from_nemo_model=PATH (or `nest-ssl import-nemo IN.nemo OUT.ckpt`)"
        )


def parse_run_config(cfg: DictConfig | Mapping) -> RunSettings:
    """Checks the run config's top-level keys and trainer-side sections (trainer, exp_manager, nest_trainer) before
    anything starts, and settles what one section decides for another (as NeMo's exp_manager does)."""
    _check_top_level(cfg)
    trainer = parse_trainer(cfg.get("trainer"))
    exp = parse_exp_manager(cfg.get("exp_manager"))
    nest = parse_nest_trainer(cfg.get("nest_trainer"))

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
        exp.checkpoint_callback_params = CheckpointSettings(monitor=None, save_top_k=1, filename="{epoch}-{step}",
                                                            save_nemo_on_train_end=False)
    if trainer.logger is True and not exp.create_tensorboard_logger:
        exp.create_tensorboard_logger = True  # Lightning's default logger is TensorBoard
    if trainer.max_time is not None:
        # Lightning stops at max_time, NeMo's exp_manager at max_time_per_run (checkpointing in both); the trainer
        # implements the latter, so the earlier of the two is the limit.
        limits = [t for t in (exp.max_time_per_run, trainer.max_time) if t is not None]
        exp.max_time_per_run = min(limits)
    return RunSettings(trainer=trainer, exp_manager=exp, nest_trainer=nest,
                       name=str(exp.name or cfg.get("name") or "default"))
