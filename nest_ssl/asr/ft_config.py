"""The fine-tuning run's config: NeMo's ASR fine-tuning keys (fast-conformer_ctc_bpe.yaml's sections), from three
layers, each over the one before: our defaults (DEFAULTS: the behaviour of the plain `nest-ssl finetune` flags), an
ASR yaml named by `--config-name` (one with a `model.tokenizer` section, e.g. nest_ssl/conf/fast-conformer_ctc_bpe),
then the command line: the flags (`--steps` is trainer.max_steps, ...; FLAG_KEYS) and `key=value` overrides.

An override's key is a full path when it starts with a top-level section (model., trainer., exp_manager., init_...);
otherwise it is a key of the model section (`encoder.n_layers=4`, as with a NEST `--config-name`). Overrides of
`model.encoder.*` / `model.preprocessor.*` apply to the NEST model section the encoder is built from
(`nest_model_section`): the pretrained checkpoint's config, or the NEST config `model.nest_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nest_ssl.asr.errors import ASRError
from nest_ssl.config import ConfigError, apply_overrides

TOP_LEVEL = ("name", "seed", "head", "init_from_nemo_model", "init_from_ptl_ckpt", "init_from_pretrained_model",
             "init_skip", "model", "trainer", "exp_manager")
ENCODER_SECTIONS = ("model.encoder.", "model.preprocessor.")
# the RNN-T head's sections (nest_ssl.asr.rnnt_model.HEAD_SECTIONS): made with the model config, so their overrides
# travel with the encoder's and are split off there
HEAD_SECTIONS = tuple(f"model.{s}" for s in ("model_defaults.", "decoder.", "joint.", "decoding.", "loss.",
                                               "rnnt_reduction="))
INIT_KEYS = ("init_from_nemo_model", "init_from_ptl_ckpt", "init_from_pretrained_model")

DEFAULTS: dict[str, Any] = {
    "name": "nest-ssl-finetune",
    "seed": 0,
    "head": "ctc",
    "init_from_nemo_model": None,
    "init_from_ptl_ckpt": None,
    "init_from_pretrained_model": None,
    "init_skip": [],
    "model": {
        "sample_rate": 16000,
        "nest_config": "nest_tiny",
        "ctc_reduction": "mean_batch",
        "freeze_encoder_steps": 0,
        "train_ds": {"manifest_filepath": None, "batch_size": 8, "shuffle": True, "num_workers": 0,
                     "pin_memory": False, "max_duration": None, "min_duration": None, "batch_duration": None,
                     "use_bucketing": False, "num_buckets": 30, "bucket_duration_bins": None},
        "validation_ds": {"manifest_filepath": None, "batch_size": 8, "shuffle": False, "num_workers": 0,
                          "pin_memory": False},
        "tokenizer": {"dir": None, "type": "bpe", "vocab_size": 128},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 0,
                         "time_masks": 0, "freq_width": 27, "time_width": 0.05},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 1e-3, "sched": None},
    },
    "trainer": {"accelerator": "auto", "devices": 1, "num_nodes": 1, "max_epochs": -1, "max_steps": 200,
                "val_check_interval": None, "precision": "32", "gradient_clip_val": 5.0, "log_every_n_steps": 1},
    "exp_manager": {"explicit_log_dir": None, "create_tensorboard_logger": True,
                    "checkpoint_callback_params": {"monitor": "val_wer", "mode": "min", "every_n_train_steps": 50}},
}

# flag (argparse dest) -> config key
FLAG_KEYS = {
    "train_manifest": "model.train_ds.manifest_filepath",
    "train_cuts": "model.train_ds.manifest_filepath",
    "dev_manifest": "model.validation_ds.manifest_filepath",
    "dev_cuts": "model.validation_ds.manifest_filepath",
    "out_dir": "exp_manager.explicit_log_dir",
    "tokenizer": "model.tokenizer.dir",
    "tokenizer_type": "model.tokenizer.type",
    "vocab_size": "model.tokenizer.vocab_size",
    "init_from": "init_from_nemo_model",
    "steps": "trainer.max_steps",
    "lr": "model.optim.lr",
    "batch_size": "model.train_ds.batch_size",
    "seed": "seed",
    "save_every": "exp_manager.checkpoint_callback_params.every_n_train_steps",
    "freeze_encoder_steps": "model.freeze_encoder_steps",
    "num_workers": "model.train_ds.num_workers",
    "precision": "trainer.precision",
    "val_every": "trainer.val_check_interval",
    "devices": "trainer.devices",
    "num_nodes": "trainer.num_nodes",
    "head": "head",
}
PRECISIONS = {"32": "32", "32-true": "32", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "16": "16-mixed",
              "16-mixed": "16-mixed"}


def full_key(key: str) -> str:
    """`encoder.n_layers` -> `model.encoder.n_layers`; full paths unchanged (Hydra prefixes kept)."""
    prefix = key[: len(key) - len(key.lstrip("+~"))]
    bare = key[len(prefix):]
    return key if bare.split(".")[0] in TOP_LEVEL else f"{prefix}model.{bare}"


def _refuse_unread_init_key(key: str) -> None:
    """An `init_from...` key that nothing reads would leave the encoder at random without a word: NeMo's NEST model
    cards pass `++init_from_pretrained.ssl...`, which NeMo's maybe_init_from_pretrained_checkpoint ignores."""
    parts = key.lstrip("+~").split(".")
    hits = [i for i, p in enumerate(parts) if p.startswith("init_from")]
    if hits and (hits != [0] or parts[0] not in INIT_KEYS):
        raise ASRError(f"{key}: not a key the initialisation reads, so no weights would load; use "
                       "init_from_nemo_model=PATH (or init_from_ptl_ckpt / init_from_pretrained_model), with "
                       "include/exclude as init_from_nemo_model.NAME.{path,include,exclude}, or --init-from PATH")


def is_asr_config(cfg: DictConfig) -> bool:
    model = cfg.get("model")
    return isinstance(model, DictConfig) and "tokenizer" in model


def build_config(*, config_name: str | None, config_path: str | None, flags: dict[str, Any],
                 overrides: list[str]) -> tuple[DictConfig, list[str]]:
    """(the run's config, the overrides for the NEST model section). `flags`: argparse dest -> value (None: not
    given). A --config-name that names a NEST config (no model.tokenizer) is model.nest_config, as it always was."""
    from nest_ssl.config import _compose, config_file

    cfg = OmegaConf.create(DEFAULTS)
    if config_name:
        named = _compose(config_file(config_path, config_name))
        if is_asr_config(named):
            cfg = OmegaConf.merge(cfg, named)
        else:
            cfg.model.nest_config = config_name
            if config_path:
                cfg.model.nest_config_path = str(config_path)
    if flags.get("train_manifest") and flags.get("train_cuts"):
        raise ASRError("give --train-manifest or --train-cuts, not both")
    if flags.get("dev_manifest") and flags.get("dev_cuts"):
        raise ASRError("give --dev-manifest or --dev-cuts, not both")
    for dest, key in FLAG_KEYS.items():
        value = flags.get(dest)
        if value is None:
            continue
        if dest == "init_from":
            cfg.init_from_nemo_model = str(value)
            continue
        OmegaConf.update(cfg, key, str(value) if isinstance(value, Path) else value, merge=False)
    if flags.get("init_skip"):
        cfg.init_skip = list(cfg.init_skip) + list(flags["init_skip"])
    for k, v in (flags.get("spec_augment") or {}).items():
        if k not in cfg.model.spec_augment:
            raise ASRError(f"--spec-augment {k}: not a SpecAugment key; use freq_masks, time_masks, freq_width, "
                           "time_width")
        cfg.model.spec_augment[k] = v
    if flags.get("max_duration") is not None:
        cfg.model.train_ds.batch_duration = float(flags["max_duration"])
        cfg.model.train_ds.use_bucketing = True
    nest_overrides, own = [], []
    for item in overrides:
        key, sep, value = item.partition("=")
        _refuse_unread_init_key(key)
        full = full_key(key)
        bare = full.lstrip("+~")
        model_side = bare.startswith(ENCODER_SECTIONS) or (bare + sep).startswith(HEAD_SECTIONS)
        (nest_overrides if model_side else own).append(full + sep + value)
    apply_overrides(cfg, own)
    # the NEST section is addressed without `model.` there: encoder.n_layers=4
    nest_overrides = [o.replace("model.", "", 1) for o in nest_overrides]
    return cfg, nest_overrides


@dataclass
class InitEntry:
    """One pretrained source: NeMo's {path, include, exclude} (include: any of them contained in the name)."""

    path: Path
    key: str
    include: list[str] | None = None
    exclude: list[str] | None = None


def init_entries(cfg: DictConfig) -> list[InitEntry]:
    keys = [k for k in INIT_KEYS if cfg.get(k) is not None]
    out: list[InitEntry] = []
    for key in keys:
        node = cfg.get(key)
        node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
        if isinstance(node, str):
            entries = [{"path": node}]
        elif isinstance(node, dict):
            entries = list(node.values())
        else:
            raise ConfigError(f"{key}: give a path or {{name: {{path: ..., include: [...], exclude: [...]}}}}")
        for e in entries:
            path = e.get("path") or e.get("name") if isinstance(e, dict) else None
            if not path:
                raise ConfigError(f"{key}: each entry needs a `path` (NeMo's form: {{name: {{path: ..., include: "
                                  "[...]}}}})")
            if key == "init_from_pretrained_model" and not Path(path).is_file():
                raise ConfigError(f"{key}: {path} is not a file; models are not downloaded here: fetch the .nemo "
                                  "and give init_from_nemo_model=PATH")
            out.append(InitEntry(Path(path), key, e.get("include"), e.get("exclude")))
    return out


def nest_model_section(cfg: DictConfig, nest_overrides: list[str]) -> dict:
    """The NEST model config the preprocessor and encoder are built from (plain, resolved)."""
    from nest_ssl.asr.init import _read_config
    from nest_ssl.config import load_config

    entries = init_entries(cfg)
    if entries:
        section = OmegaConf.create(_read_config(entries[0].path))
        apply_overrides(section, nest_overrides)
        return OmegaConf.to_container(section, resolve=True)
    full = load_config(config_path=cfg.model.get("nest_config_path"), config_name=str(cfg.model.nest_config),
                       resolve=False)
    apply_overrides(full.model, nest_overrides)
    return OmegaConf.to_container(full, resolve=True)["model"]


@dataclass
class LoopSettings:
    max_steps: int
    max_epochs: int
    save_every: int
    val_every: int | None  # steps; None: at the end of every epoch
    log_every: int
    freeze_encoder_steps: int
    grad_clip: float
    precision: str
    seed: int
    devices: int
    monitor: str = "wer"  # the dev score best.ckpt is chosen by: wer | cer (lower is better; ties keep the earlier)


def loop_settings(cfg: DictConfig) -> LoopSettings:
    t = cfg.trainer
    precision = PRECISIONS.get(str(t.precision))
    if precision is None:
        raise ConfigError(f"trainer.precision={t.precision}: use 32, bf16-mixed or 16-mixed")
    max_steps, max_epochs = int(t.max_steps), int(t.max_epochs)
    if max_steps < 1 and max_epochs < 1:
        raise ConfigError("set trainer.max_steps (--steps) or trainer.max_epochs to a positive number")
    save_every = int(cfg.exp_manager.checkpoint_callback_params.every_n_train_steps)
    if save_every < 1:
        raise ConfigError("exp_manager.checkpoint_callback_params.every_n_train_steps (--save-every) must be >= 1")
    vci = t.val_check_interval
    if vci is None:
        val_every: int | None = save_every
    elif isinstance(vci, float):
        if vci != 1.0:
            raise ConfigError(f"trainer.val_check_interval={vci}: give 1.0 (every epoch) or a number of steps")
        val_every = None
    else:
        val_every = int(vci)
        if val_every < 1:
            raise ConfigError("trainer.val_check_interval (--val-every) must be >= 1")
    monitor = str(cfg.exp_manager.checkpoint_callback_params.get("monitor", "val_wer"))
    if monitor not in ("val_wer", "val_cer"):
        raise ConfigError(f"exp_manager.checkpoint_callback_params.monitor={monitor}: use val_wer or val_cer")
    devices = int(t.devices)
    if devices < 1:
        raise ConfigError(f"trainer.devices={devices}: give the number of processes (>= 1)")
    if float(t.gradient_clip_val) < 0:
        raise ConfigError("trainer.gradient_clip_val must be >= 0")
    return LoopSettings(max_steps=max_steps, max_epochs=max_epochs, save_every=save_every, val_every=val_every,
                        log_every=max(1, int(t.log_every_n_steps)),
                        freeze_encoder_steps=int(cfg.model.freeze_encoder_steps),
                        grad_clip=float(t.gradient_clip_val), precision=precision, seed=int(cfg.seed),
                        devices=devices, monitor=monitor[4:])
