"""`run(cfg)`: one training run from a full config (name, model, trainer, exp_manager), as NeMo's
masked_token_pred_pretrain.py + exp_manager + Lightning's Trainer.fit would do it.

Layout of a run (NeMo's exp_manager): `<exp_dir>/<name>/<version>/` with `checkpoints/`, TensorBoard events,
`metrics.jsonl`, `hparams.yaml` (the resolved config), `cmd-args.log` and `nemo_log_globalrank-R_localrank-L.txt`.
exp_dir defaults to ./nemo_experiments; with resume_if_exists there is no version folder, so the same command
finds its own checkpoints again.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from nest_ssl import checkpoint as ckpt_io
from nest_ssl.config import ConfigError
from nest_ssl.errors import UserError
from nest_ssl.seeding import seed_for, set_deterministic
from nest_ssl.train.distributed import (
    DistInfo,
    LaunchPlan,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    destroy_distributed,
    init_distributed,
    plan_launch,
    spawn,
)
from nest_ssl.train.loggers import setup_text_logging
from nest_ssl.train.preflight import preflight
from nest_ssl.train.run_lock import RunFolderBusyError, RunFolderLock
from nest_ssl.train.run_status import clear_status, read_status, write_status
from nest_ssl.train.signals import StopRequests
from nest_ssl.train.slurm import adopt_slurm_env, from_slurm
from nest_ssl.train.trainer import NonFiniteLossError, Trainer
from nest_ssl.train.trainer_config import RunSettings, parse_run_config

log = logging.getLogger("nest_ssl.train")

VERSION_ENV = "NEMO_EXPERIMENT_VERSION"  # NeMo's variable: lets every process of a run use one version folder


@dataclass
class RunResult:
    log_dir: Path
    global_step: int | None = None
    epoch: int | None = None
    stop_reason: str | None = None


class ResumeError(UserError, RuntimeError):
    """No checkpoint to resume from where the config asks for one, or an unusable one."""


# ----------------------------------------------------------------------------------------------------------------
# Config checks done before any process starts


def _check_required(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        examples = " ".join(f"{k}=..." for k in missing)
        raise ConfigError(f"these keys must be set (they are ??? in the config): {', '.join(missing)}; e.g. {examples}")


def _as_config(cfg: Any) -> DictConfig:
    if isinstance(cfg, DictConfig):
        return cfg
    if isinstance(cfg, Mapping):
        return OmegaConf.create(dict(cfg))
    raise ConfigError("run(cfg) needs a config mapping (nest_ssl.config.load_config(...))")


# ----------------------------------------------------------------------------------------------------------------
# exp_manager: where the run writes


def resolve_log_dir(settings: RunSettings, info: DistInfo | None = None, decide_version: bool = True) -> Path:
    """NeMo's get_log_dir: explicit_log_dir, or exp_dir/name/version (no version folder with resume_if_exists)."""
    e = settings.exp_manager
    if e.explicit_log_dir:
        return Path(e.explicit_log_dir)
    exp_dir = Path(e.exp_dir) if e.exp_dir else Path.cwd() / "nemo_experiments"
    name = e.name or settings.name or "default"
    version = e.version or os.environ.get(VERSION_ENV) or None
    if not version and not e.resume_if_exists and decide_version:
        if info is None or info.is_global_zero:
            if e.use_datetime_version:
                version = time.strftime("%Y-%m-%d_%H-%M-%S")
            else:
                existing = [p.name for p in (exp_dir / name).glob("version_*") if p.name[8:].isdigit()]
                version = f"version_{max([int(n[8:]) for n in existing], default=-1) + 1}"
        if info is not None:
            version = broadcast_object(info, version)
    return exp_dir / name / (version or "")


def _write_run_files(log_dir: Path, cfg: DictConfig, settings: RunSettings, command_line: str | None) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "hparams.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    if command_line:
        with open(log_dir / "cmd-args.log", "w", encoding="utf-8") as f:
            f.write(command_line + "\n")
    for src in settings.exp_manager.files_to_copy:
        p = Path(src)
        if p.is_file():
            shutil.copy(p, log_dir / p.name)
        else:
            log.warning("exp_manager.files_to_copy: %s is not a file; not copied", src)


# ----------------------------------------------------------------------------------------------------------------
# Resume (NeMo's check_resume)


def find_checkpoint_to_resume(settings: RunSettings, ckpt_dir: Path) -> tuple[Path | None, dict | None]:
    e = settings.exp_manager
    if e.resume_from_checkpoint:
        path = Path(e.resume_from_checkpoint)
        if not path.is_file():
            raise ResumeError(f"exp_manager.resume_from_checkpoint: {path} does not exist")
        ckpt = ckpt_io.load_checkpoint(path)  # a corrupt explicit checkpoint is an error, not a fallback
        if not ckpt_io.is_resumable(ckpt):
            raise ResumeError(f"{path} holds weights only; start from it with init_from_ptl_ckpt={path} instead")
        return path, ckpt
    if not e.resume_if_exists:
        return None, None
    ckpt_io.cleanup_temporaries(ckpt_dir)
    found = ckpt_io.find_resume_checkpoint(ckpt_dir)
    if found is not None and found.path is not None:
        for bad, why in found.skipped:
            log.error("checkpoint %s was skipped: %s", bad, why)
        if found.skipped:
            log.warning("resuming from the newest intact checkpoint instead: %s", found.path)
        return found.path, found.ckpt
    if found is not None and found.skipped:
        listing = "; ".join(f"{p.name}: {why}" for p, why in found.skipped)
        raise ResumeError(f"no usable checkpoint in {ckpt_dir} ({listing}); remove them to start from scratch")
    if e.resume_ignore_no_checkpoint:
        log.info("no checkpoint in %s: training from scratch", ckpt_dir)
        return None, None
    raise ResumeError(
        f"exp_manager.resume_if_exists=true but there is no checkpoint in {ckpt_dir}; set "
        "exp_manager.resume_ignore_no_checkpoint=true to start from scratch"
    )


# ----------------------------------------------------------------------------------------------------------------
# Initialisation from pretrained weights (NeMo's maybe_init_from_pretrained_checkpoint)


def _filter(sd: dict, include, exclude) -> dict:
    include = list(include) if include else [""]
    exclude = list(exclude or [])
    return {k: v for k, v in sd.items() if any(k.startswith(i) for i in include) and not any(k.startswith(x) for x in exclude)}


def init_from_pretrained(model: torch.nn.Module, cfg: DictConfig) -> None:
    from nest_ssl.checkpoint.nemo import load_checkpoint_any, read_nemo

    keys = [k for k in ("init_from_nemo_model", "init_from_ptl_ckpt") if cfg.get(k) is not None]
    if not keys:
        return
    if len(keys) > 1:
        raise ConfigError(f"give one of init_from_nemo_model / init_from_ptl_ckpt, not both ({keys})")
    key = keys[0]
    node = cfg.get(key)
    node = OmegaConf.to_container(node, resolve=True) if not isinstance(node, str) else node
    entries = [{"path": node}] if isinstance(node, str) else list(node.values())
    for entry in entries:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not path:
            raise ConfigError(f"{key}: each entry needs a `path` (NeMo's form: {{name: {{path: ..., include: [...]}}}})")
        if key == "init_from_nemo_model":
            _, sd = read_nemo(path)
        else:
            sd = load_checkpoint_any(path)["state_dict"]
        sd = {k: v for k, v in sd.items() if not k.startswith("decoder_ssl.")}
        part = _filter(sd, entry.get("include"), entry.get("exclude"))
        own = model.state_dict()
        mismatched = [k for k in part if k in own and own[k].shape != part[k].shape]
        if mismatched and cfg.get("init_strict", True):
            raise ConfigError(f"{key}={path}: shapes differ for {mismatched[:5]} (a different model size?); "
                              "init_strict=false skips such tensors")
        if mismatched:
            log.warning("init_strict=false: %d tensors of %s have other shapes and are not loaded, e.g. %s",
                        len(mismatched), path, mismatched[:3])
            part = {k: v for k, v in part.items() if k not in mismatched}
        result = model.load_state_dict(part, strict=False)
        loaded = len(part) - len(result.unexpected_keys)
        log.info("initialised %d tensors from %s (%s); %d of the model's were not in it", loaded, path, key,
                 len(result.missing_keys))
        if result.unexpected_keys:
            log.warning("%s: %d keys are not in this model, e.g. %s", path, len(result.unexpected_keys),
                        result.unexpected_keys[:3])


# ----------------------------------------------------------------------------------------------------------------


def _model_summary(model: torch.nn.Module) -> str:
    rows = []
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters())
        nt = sum(p.numel() for p in child.parameters() if p.requires_grad)
        rows.append(f"  {name:<18} {type(child).__name__:<34} {n:>14,d} ({nt:,d} trainable)")
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return "\n".join(["model:"] + rows + [f"  total {total:,d} parameters, {trainable:,d} trainable"])


def run(cfg: Any, *, command_line: str | None = None) -> RunResult:
    """Trains as the config says; returns where the run wrote. Starts the processes itself when
    trainer.devices > 1 and no launcher (torchrun) started this one."""
    cfg = _as_config(cfg)
    _check_required(cfg)  # a ??? value is named as such, before its section's type check sees it
    settings = parse_run_config(cfg)
    preflight(cfg, settings)  # manifests, values, checkpoints: before any process, model or folder exists
    adopt_slurm_env()  # an srun task: SLURM's variables as torchrun's (torchrun's own win when present)
    plan = plan_launch(settings.trainer)
    if plan.use_ddp and not plan.under_launcher:
        # Decide the version folder once, here, so that every process writes to the same one.
        log_dir = resolve_log_dir(settings)
        if not settings.exp_manager.resume_if_exists and not settings.exp_manager.explicit_log_dir:
            os.environ[VERSION_ENV] = log_dir.name
        container = OmegaConf.to_container(cfg, resolve=True)
        try:
            spawn(_spawned_run, plan.devices_per_node, (container, command_line))
        except Exception as err:  # torch.multiprocessing.ProcessRaisedException: re-raise as what the child raised
            raise _child_error(err) from err
        status = read_status(log_dir) or {}  # how the processes' run ended (their rank 0 wrote it)
        return RunResult(log_dir=log_dir, global_step=status.get("global_step"), epoch=status.get("epoch"),
                         stop_reason=status.get("stop_reason"))
    return _run_process(cfg, settings, plan, command_line)


def _child_error(err: Exception) -> Exception:
    """The exception type a started process raised, with its message, so the CLI reports it as usual."""
    text = str(err)
    for cls in (NonFiniteLossError, *_user_error_classes()):
        marker = f"{cls.__module__}.{cls.__name__}: "
        if marker in text:
            tail = text.split(marker, 1)[1].strip()
            return cls(tail)
    return err


def _user_error_classes() -> list[type]:
    """UserError and every subclass defined so far (a child's ManifestError is re-raised as one; they are matched
    by module-qualified name, so their order does not matter)."""
    found, todo = [], [UserError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _spawned_run(container: dict, command_line: str | None) -> None:
    cfg = OmegaConf.create(container)
    settings = parse_run_config(cfg)
    plan = plan_launch(settings.trainer)
    _run_process(cfg, settings, plan, command_line)


def build_trainer(cfg: DictConfig, settings: RunSettings, info: DistInfo, *, log_dir: Path, ckpt_dir: Path,
                  init_weights: bool = True, resume_step: int | None = None,
                  stops: StopRequests | None = None) -> Trainer:
    """Model (seeded init, init_from_* when init_weights), SyncBatchNorm, optimizer, scheduler, dataloaders and the
    Trainer around them, on this process's device."""
    from nest_ssl.checkpoint.nemo import write_nemo
    from nest_ssl.data import build_dataloader, parse_data_config
    from nest_ssl.models import NESTModel
    from nest_ssl.optim import build_optimizer, build_scheduler

    t = settings.trainer
    # The data sections, typed and checked once, before the model is built.
    train_ds = parse_data_config(cfg.model.train_ds, "model.train_ds")
    val_node = cfg.model.get("validation_ds")
    val_ds = (parse_data_config(val_node, "model.validation_ds")
              if val_node is not None and val_node.get("manifest_filepath") else None)
    seed = settings.nest_trainer.seed
    seed_for(seed, "init", 0)  # the same initial weights on every rank (DDP also broadcasts them)
    model = NESTModel.from_config(cfg.model)
    if init_weights:
        init_from_pretrained(model, cfg)
    if t.sync_batchnorm and info.world_size > 1:
        model = convert_sync_batchnorm(model, info.device)
    model.to(info.device)
    if t.enable_model_summary and info.is_global_zero:
        log.info(_model_summary(model))
    optimizer = build_optimizer(model.parameters(), cfg.model.optim)
    sched_cfg = cfg.model.optim.get("sched")
    max_steps = t.max_steps if t.max_steps != -1 else None
    scheduler = build_scheduler(optimizer, sched_cfg, max_steps=max_steps) if sched_cfg is not None else None

    sr = int(cfg.model.get("sample_rate", 16000))
    train_loader = build_dataloader(train_ds, sample_rate=sr, seed=seed, rank=info.rank,
                                    world_size=info.world_size, training=True, section="model.train_ds")
    # Iterable (Shar) input resumes in Trainer.restore: every worker stream continues where the trained batches
    # left it (nest_ssl.data.ResumableIterable), so the loader is built with the run's own seed.
    val_loader = None
    if val_ds is not None:
        val_loader = build_dataloader(val_ds, sample_rate=sr, seed=seed, rank=info.rank,
                                      world_size=info.world_size, training=False, section="model.validation_ds")

    def write_nemo_fn(out_path, state_dict):
        write_nemo(out_path, cfg.model, state_dict)

    return Trainer(cfg=cfg, settings=settings, info=info, model=model, optimizer=optimizer, scheduler=scheduler,
                   train_loader=train_loader, val_loader=val_loader, log_dir=log_dir, ckpt_dir=ckpt_dir,
                   write_nemo_fn=write_nemo_fn, stop_requests=stops)


def _missing_dirs(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, outermost first: what this run would create."""
    missing = []
    p = path.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    return missing[::-1]


def _remove_run_folder(created: list[Path], info: DistInfo) -> None:
    """A run that failed before its first step leaves no folder behind (only the folders it created itself)."""
    if not created or not info.is_global_zero:
        return
    setup_text_logging(None, info.rank, info.local_rank, write_file=False, console=True)  # close the log file
    shutil.rmtree(created[0], ignore_errors=True)


def _lock_run_folder(log_dir: Path, info: DistInfo) -> RunFolderLock | None:
    """Global rank 0 creates the run folder and locks it; every rank learns whether another run holds it."""
    lock, busy = None, None
    if info.is_global_zero:
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = RunFolderLock(log_dir).acquire()
        except RunFolderBusyError as err:
            busy = str(err)
    busy = broadcast_object(info, busy)
    if busy:
        raise RunFolderBusyError(busy)
    return lock


def _run_process(cfg: DictConfig, settings: RunSettings, plan: LaunchPlan, command_line: str | None) -> RunResult:
    info = init_distributed(plan)
    # Preemption signals are caught from here on: one that comes while the model or the checkpoint loads stops
    # the run at its start (resumable) instead of killing it.
    e = settings.exp_manager
    stops = StopRequests(handle_signals=e.create_preemption_callback, max_time_per_run=e.max_time_per_run)
    stops.install()
    trainer = None
    lock = None
    created: list[Path] = []
    started = failed = False
    if settings.nest_trainer.num_threads is not None:
        torch.set_num_threads(settings.nest_trainer.num_threads)
    try:
        t = settings.trainer
        set_deterministic(t.deterministic, t.benchmark)
        if t.detect_anomaly:
            torch.autograd.set_detect_anomaly(True)
        log_dir = resolve_log_dir(settings, info)
        created = _missing_dirs(log_dir)
        barrier(info)  # every rank looks before any rank creates the folder (its own log file)
        try:
            lock = _lock_run_folder(log_dir, info)  # before anything in the folder is written
        except RunFolderBusyError:
            created = []  # the folder is the other run's
            raise
        if info.is_global_zero:
            clear_status(log_dir)  # a status file present is the one this run writes when it ends
        write_log = (not e.log_global_rank_0_only or info.is_global_zero) and (
            not e.log_local_rank_0_only or info.local_rank == 0)
        setup_text_logging(log_dir, info.rank, info.local_rank, write_file=write_log, console=info.is_global_zero)
        if info.is_global_zero:
            _write_run_files(log_dir, cfg, settings, command_line)
        log.info("run folder: %s (%d process(es), %s, precision %s)", log_dir, info.world_size,
                 plan.accelerator, t.precision)
        if from_slurm():
            log.info("srun task %d of %d (node %d): rendezvous at %s:%s", info.rank, info.world_size, info.node_rank,
                     os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"])
        ckpt_dir = Path(e.checkpoint.dirpath) if e.checkpoint.dirpath else log_dir / "checkpoints"

        # Rank 0 chooses the checkpoint (it may have to skip corrupt ones); every rank loads the same file.
        if info.is_global_zero:
            try:
                path, ckpt = find_checkpoint_to_resume(settings, ckpt_dir)
                err = None
            except (ResumeError, ckpt_io.CheckpointError) as ex:
                path, ckpt, err = None, None, str(ex)
        else:
            path, ckpt, err = None, None, None
        path, err = broadcast_object(info, (str(path) if path else None, err))
        if err:
            raise ResumeError(err)
        if path and ckpt is None:
            # rank 0 has just verified this file's digest; the other ranks map it without reading it all again
            ckpt = ckpt_io.load_checkpoint(path, verify=False)

        trainer = build_trainer(cfg, settings, info, log_dir=log_dir, ckpt_dir=ckpt_dir, init_weights=ckpt is None,
                                resume_step=ckpt["global_step"] if ckpt is not None else None, stops=stops)
        if ckpt is not None:
            trainer.restore(ckpt, Path(path))
        del ckpt
        started = True
        trainer.fit()
        trainer.finish()
        st = trainer.state
        if info.is_global_zero:  # before the barrier: when any rank has ended, the status is there
            write_status(log_dir, trainer.stop_reason, st.global_step, st.epoch)
        barrier(info)
        log.info("done: global step %d, epoch %d (%s); checkpoints in %s", st.global_step, st.epoch,
                 trainer.stop_reason or "finished", ckpt_dir)
        return RunResult(log_dir=log_dir, global_step=st.global_step, epoch=st.epoch, stop_reason=trainer.stop_reason)
    except NonFiniteLossError as err:
        log.error("%s", err)
        raise
    except BaseException:
        failed = True
        raise
    finally:
        if trainer is not None:
            trainer.close()
        stops.uninstall()
        if failed and not started:
            _remove_run_folder(created, info)
        if lock is not None:
            lock.release()
        destroy_distributed()
