"""`nest-ssl finetune`: ASR fine-tuning of the Conformer encoder (the loop: nest_ssl.asr.ft_loop).

Everything is checked before anything is written: the manifests or cuts, every transcript against the tokenizer
(named by file and line), the model config against the pretrained checkpoint. Then the run folder (locked against a
second run: nest_ssl.train.run_lock) gets `tokenizer/`, `hparams.yaml`, `step-N.ckpt` every save_every steps and
at the end (all kept, for `--avg`), `best.ckpt` (lowest dev WER), `log.tsv` (step, loss, dev WER/CER),
`metrics.jsonl` and TensorBoard events, `finetune.log` (what was printed: where the encoder came from, progress)
and `train_status.json` (how the run ended). With trainer.devices > 1 the processes are started here (DDP; gloo on
the CPU); under torchrun or srun (one process per device, trainer.num_nodes nodes) the launcher starts them. Run
again on the same folder, it resumes from the last checkpoint (model, optimizer, scheduler, the sampler's position
in the epoch), so the losses are those of an uninterrupted run; max_steps may grow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from nest_ssl.asr.errors import ASRError
from nest_ssl.asr.ft_config import init_entries, loop_settings, nest_model_section
from nest_ssl.asr.labelled import check_labelled

log = logging.getLogger(__name__)


@dataclass
class FinetuneOptions:
    """The plain flags of `nest-ssl finetune` as a library call (`options_config` turns them into the config)."""

    train_manifest: Path
    out_dir: Path
    dev_manifest: Path | None = None
    tokenizer_dir: Path | None = None  # a tokenizer folder or a CTC .nemo; else one is trained from the transcripts
    tokenizer_type: str = "bpe"
    vocab_size: int = 128
    init_from: Path | None = None
    init_skip: list[str] = field(default_factory=list)
    config_name: str | None = None  # a NEST config (default nest_tiny) or an ASR fine-tuning yaml
    overrides: list[str] = field(default_factory=list)
    spec_augment: dict = field(default_factory=dict)
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    save_every: int = 50
    freeze_encoder_steps: int = 0
    head: str = "ctc"  # or "rnnt"


def options_config(opts: FinetuneOptions) -> tuple[DictConfig, list[str]]:
    """(the run's config, the NEST model overrides) of these options, as the command line builds them."""
    from nest_ssl.asr.ft_config import build_config

    flags = {"train_manifest": opts.train_manifest, "out_dir": opts.out_dir, "dev_manifest": opts.dev_manifest,
             "tokenizer": opts.tokenizer_dir, "tokenizer_type": opts.tokenizer_type, "vocab_size": opts.vocab_size,
             "init_from": opts.init_from, "steps": opts.steps, "lr": opts.lr, "batch_size": opts.batch_size,
             "seed": opts.seed, "save_every": opts.save_every, "freeze_encoder_steps": opts.freeze_encoder_steps,
             "init_skip": list(opts.init_skip), "spec_augment": dict(opts.spec_augment), "head": opts.head}
    return build_config(config_name=opts.config_name, config_path=None, flags=flags, overrides=list(opts.overrides))


@dataclass
class FinetuneResult:
    out_dir: Path
    stop_reason: str | None
    global_step: int


def _last_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(out_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1])) if out_dir.is_dir() else []
    return found[-1] if found else None


def _identity(cfg: DictConfig, utterances: int) -> dict:
    spec = cfg.model.train_ds.manifest_filepath
    paths = [str(Path(p).resolve()) for p in (spec if not isinstance(spec, str) else spec.split(","))]
    return {"train_manifest": ",".join(paths), "utterances": utterances}


def _train_spec(cfg: DictConfig):
    spec = cfg.model.train_ds.get("manifest_filepath")
    if spec is None or OmegaConf.is_missing(cfg.model.train_ds, "manifest_filepath"):
        raise ASRError("no training data: give --train-manifest, --train-cuts or model.train_ds.manifest_filepath")
    return OmegaConf.to_container(spec) if not isinstance(spec, str) else spec


def _dev_spec(cfg: DictConfig):
    spec = cfg.model.validation_ds.get("manifest_filepath")
    return None if spec is None else (OmegaConf.to_container(spec) if not isinstance(spec, str) else spec)


def build_model(asr_cfg: dict, cfg: DictConfig, *, init: bool, tokenizer=None):
    """The ASR model, seeded; with `init`, initialised from the config's pretrained sources (strictly; a CTC .nemo's
    head too when `tokenizer` is the archive's)."""
    from nest_ssl.asr.heads import build_asr_model
    from nest_ssl.asr.init import init_from_pretrained

    torch.manual_seed(int(cfg.seed))
    model = build_asr_model(asr_cfg)
    reports = []
    if init:
        for e in init_entries(cfg):
            reports.append(init_from_pretrained(model, e.path, list(cfg.init_skip), tokenizer, e.include, e.exclude))
    return model, reports


def prepare(cfg: DictConfig | FinetuneOptions, nest_overrides: list[str] | None = None):
    """Every check, nothing written: (model, tokenizer, the first init report or None, asr config, train
    utterances)."""
    if isinstance(cfg, FinetuneOptions):
        cfg, nest_overrides = options_config(cfg)
    model, tok, asr_cfg, reports, utterances = _prepare(cfg, nest_overrides or [])
    return model, tok, (reports[0] if reports else None), asr_cfg, utterances


def _prepare(cfg: DictConfig, nest_overrides: list[str]):
    from nest_ssl.asr.heads import build_asr_config
    from nest_ssl.asr.tokenizer import load_tokenizer, train_tokenizer

    sr = int(cfg.model.sample_rate)
    tcfg = cfg.model.tokenizer
    kind = str(tcfg.type)
    if kind not in ("bpe", "unigram", "char"):
        raise ASRError(f"model.tokenizer.type={kind}: use bpe or unigram (SentencePiece) or char")
    if tcfg.dir is not None:
        tok = load_tokenizer(tcfg.dir, kind)
        train = check_labelled(_train_spec(cfg), "model.train_ds.manifest_filepath", sr, tok)
    else:
        train = check_labelled(_train_spec(cfg), "model.train_ds.manifest_filepath", sr, keep_texts=True)
        tok = train_tokenizer(train.texts, kind, int(tcfg.vocab_size))
        check_labelled(_train_spec(cfg), "model.train_ds.manifest_filepath", sr, tok, need_audio=False)
    if _dev_spec(cfg) is not None:
        check_labelled(_dev_spec(cfg), "model.validation_ds.manifest_filepath", sr, tok)
    from nest_ssl.asr.rnnt_model import split_head_overrides

    nest_overrides, head_overrides = split_head_overrides(nest_overrides)  # model_defaults., joint., ...: RNN-T's
    if head_overrides and str(cfg.head) != "rnnt":
        raise ASRError(f"{head_overrides[0]}: a key of the RNN-T head; give --head rnnt, or leave it out")
    nest = nest_model_section(cfg, nest_overrides)
    spec = {k: v for k, v in OmegaConf.to_container(cfg.model.spec_augment, resolve=True).items() if k != "_target_"}
    asr_cfg = build_asr_config(str(cfg.head), nest, tok.kind, tok.tokens(), spec, head_overrides)
    asr_cfg["ctc_reduction"] = str(cfg.model.ctc_reduction)
    model, reports = build_model(asr_cfg, cfg, init=True, tokenizer=tok)
    return model, tok, asr_cfg, reports, train.utterances


def finetune(cfg: DictConfig, nest_overrides: list[str] | None = None,
             say: Callable[[str], None] = print) -> FinetuneResult:
    """Runs (or resumes) the fine-tuning; every line `say` gets also goes to OUT/finetune.log.

    Three ways it starts, as `nest-ssl train` does (nest_ssl.train.distributed): one process; trainer.devices=N
    processes started here; or under torchrun / srun (one process per device, on one node or many: the processes
    are started by the launcher and each calls this)."""
    from nest_ssl.asr.heads import check_head
    from nest_ssl.train.distributed import under_launcher
    from nest_ssl.train.slurm import adopt_slurm_env

    if cfg.exp_manager.explicit_log_dir is None:
        raise ASRError("no run folder: give --out-dir (exp_manager.explicit_log_dir)")
    settings = loop_settings(cfg)
    check_head(str(cfg.head))
    adopt_slurm_env()  # an srun task: SLURM's variables as torchrun's (torchrun's own win when present)
    plan = _plan(cfg)  # a mismatch of trainer.devices / num_nodes and the launcher's processes is one line
    if settings.precision == "16-mixed" and plan.accelerator != "gpu":
        raise ASRError("trainer.precision=16-mixed needs a GPU; on the CPU use bf16-mixed or 32")
    if under_launcher():
        return _finetune_launched(cfg, nest_overrides or [], say)
    start = _start_run(cfg, nest_overrides or [], say)
    try:
        if settings.devices > 1:
            from nest_ssl.train.distributed import spawn
            from nest_ssl.train.run import _child_error
            from nest_ssl.train.run_status import read_status

            try:
                spawn(_spawned, settings.devices, start.process_args())
            except Exception as err:  # a process's error, re-raised as its own type (a user error: one line)
                raise _child_error(err) from err
            status = read_status(start.out_dir) or {}
            return FinetuneResult(start.out_dir, status.get("stop_reason"), int(status.get("global_step", 0)))
        return _run_process(*start.process_args(), model=start.model, say=start.note)
    finally:
        start.lock.release()


@dataclass
class _Start:
    """A run checked and its folder locked and written: what every training process needs."""

    out_dir: Path
    lock: object  # nest_ssl.train.run_lock.RunFolderLock, held
    container: dict  # the resolved config
    asr_cfg: dict
    last: Path | None  # the checkpoint resumed from
    identity: dict
    model: torch.nn.Module | None  # built and initialised (a new run), else None
    note: Callable[[str], None]

    def process_args(self) -> tuple:
        return self.container, self.asr_cfg, str(self.last) if self.last else None, self.identity


def _start_run(cfg: DictConfig, nest_overrides: list[str], say: Callable[[str], None]) -> _Start:
    """Every check (manifests, transcripts, tokenizer, the pretrained checkpoint; or the run to resume), then the
    folder: locked, `tokenizer/`, `hparams.yaml`, what was found printed and logged. Nothing is written on error."""
    from nest_ssl.asr.model_io import read_asr_checkpoint
    from nest_ssl.asr.tokenizer import load_tokenizer
    from nest_ssl.train.run_lock import RunFolderLock
    from nest_ssl.train.run_status import clear_status

    out_dir = Path(cfg.exp_manager.explicit_log_dir)
    settings = loop_settings(cfg)
    last = _last_checkpoint(out_dir)
    pending: list[str] = []
    if last is not None:
        ckpt = read_asr_checkpoint(last)
        training = ckpt.get("training")
        if training is None or "loop" not in training:
            raise ASRError(f"--out-dir {out_dir}: {last.name} cannot be resumed from (no training state); choose "
                           "another folder")
        asr_cfg = ckpt["asr_config"]
        tok = load_tokenizer(out_dir / "tokenizer", asr_cfg.get("tokenizer", {}).get("type"))
        train = check_labelled(_train_spec(cfg), "model.train_ds.manifest_filepath", int(cfg.model.sample_rate), tok)
        if training["data"] != _identity(cfg, train.utterances):
            raise ASRError(f"--out-dir {out_dir}: holds a run on {training['data']['train_manifest']} "
                           f"({training['data']['utterances']} utterances), not this --train-manifest; choose "
                           "another folder")
        if _dev_spec(cfg) is not None:
            check_labelled(_dev_spec(cfg), "model.validation_ds.manifest_filepath", int(cfg.model.sample_rate), tok)
        pending.append(f"resuming from {last} (step {ckpt['global_step']}); the run's tokenizer and model config "
                       "apply")
        model = None
        utterances = train.utterances
        del ckpt
    else:
        model, tok, asr_cfg, reports, utterances = _prepare(cfg, nest_overrides)
        pending.extend([r.line() for r in reports] or ["encoder initialised at random (no --init-from)"])
    _check_data_sections(cfg, settings.seed)
    build_optim(cfg, [torch.nn.Parameter(torch.zeros(1))], settings.max_steps)
    # Everything checked: the folder is written from here on.
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = RunFolderLock(out_dir).acquire()

    def note(line: str) -> None:
        say(line)
        log.info("%s", line)
        with open(out_dir / "finetune.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    try:
        for line in pending:
            note(line)
        if last is None:
            tok.save(out_dir / "tokenizer")
        (out_dir / "hparams.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
        clear_status(out_dir)
    except BaseException:
        lock.release()
        raise
    return _Start(out_dir, lock, OmegaConf.to_container(cfg, resolve=True), asr_cfg, last,
                  _identity(cfg, utterances), model, note)


def _finetune_launched(cfg: DictConfig, nest_overrides: list[str], say: Callable[[str], None]) -> FinetuneResult:
    """Under torchrun or srun: every process joins the group first; global rank 0 checks the run and locks and
    writes its folder, exactly as a single process does, and tells the others what to train (or its error, which
    every rank then raises: one line each, exit 2); every rank trains (rank 0 initialises the weights, DDP gives them
    to the others at the start); rank 0 lets the folder go at the end. The run folder must be on a file system every
    node sees, as `nest-ssl train`'s."""
    from nest_ssl.train.distributed import broadcast_object, destroy_distributed, init_distributed
    from nest_ssl.train.run import _user_error_classes

    info = init_distributed(_plan(cfg))
    start = error = None
    try:
        failure = args = None
        if info.is_global_zero:
            try:
                start = _start_run(cfg, nest_overrides, say)
                args = start.process_args()
            except Exception as err:
                error, failure = err, (f"{type(err).__module__}.{type(err).__qualname__}", str(err))
        failure, args = broadcast_object(info, (failure, args))
        if error is not None:
            raise error
        if failure is not None:
            name, message = failure
            for cls in _user_error_classes():
                if f"{cls.__module__}.{cls.__qualname__}" == name:
                    raise cls(message)
            raise RuntimeError(f"global rank 0 failed before training: {name}: {message}")
        if info.is_global_zero:
            return _run_process(*args, model=start.model, say=start.note)
        return _run_process(*args, model=None, say=lambda line: None)
    finally:
        if start is not None:
            start.lock.release()
        destroy_distributed()


def _spawned(container: dict, asr_cfg: dict, last: str | None, identity: dict) -> None:
    out_dir = Path(container["exp_manager"]["explicit_log_dir"])

    def note(line: str) -> None:
        print(line, flush=True)
        with open(out_dir / "finetune.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    _run_process(container, asr_cfg, last, identity, model=None, say=note)


def _plan(cfg: DictConfig):
    from types import SimpleNamespace

    from nest_ssl.train.distributed import plan_launch

    t = cfg.trainer
    return plan_launch(SimpleNamespace(accelerator=str(t.get("accelerator", "auto")), devices=int(t.devices),
                                       num_nodes=int(t.get("num_nodes", 1))))


def _run_process(container: dict, asr_cfg: dict, last: str | Path | None, identity: dict, *, model,
                 say: Callable[[str], None]) -> FinetuneResult:
    """One training process (rank 0 of 1, or one of the DDP processes: spawned here or by a launcher)."""
    from nest_ssl.asr.dataset import ASRDataset
    from nest_ssl.asr.ft_loop import LOG_TSV, FinetuneLoop, FitInputs
    from nest_ssl.asr.model_io import read_asr_checkpoint, save_asr
    from nest_ssl.asr.tokenizer import load_tokenizer
    from nest_ssl.data import make_dataloader, parse_data_config
    from nest_ssl.data.manifests import open_source
    from nest_ssl.data.sampler import build_sampler
    from nest_ssl.train.distributed import barrier, destroy_distributed, init_distributed
    from nest_ssl.train.run_status import write_status
    from nest_ssl.train.signals import StopRequests

    cfg = OmegaConf.create(container)
    s = loop_settings(cfg)
    out_dir = Path(cfg.exp_manager.explicit_log_dir)
    last = Path(last) if last else None
    info = init_distributed(_plan(cfg))
    stops = StopRequests(handle_signals=True, max_time_per_run=None)
    stops.install()
    try:
        quiet = say if info.is_global_zero else (lambda line: None)
        ckpt = read_asr_checkpoint(last) if last is not None else None
        tok = load_tokenizer(out_dir / "tokenizer", asr_cfg.get("tokenizer", {}).get("type"))
        if model is None:
            model, _ = build_model(asr_cfg, cfg, init=ckpt is None and info.is_global_zero, tokenizer=tok)
        if ckpt is not None:
            model.load_state_dict(ckpt["state_dict"])
        model.to(info.device)
        sr = int(model.sample_rate)
        optimizer, scheduler = build_optim(cfg, model.parameters(), s.max_steps)
        train_ds, sampler = _train_sampler(cfg, s.seed, info.rank, info.world_size)
        dataset = ASRDataset(tok, sr)
        loader = make_dataloader(dataset, sampler, train_ds, seed=s.seed)
        dev = None
        if _dev_spec(cfg) is not None:
            dev_ds = parse_data_config(_data_node(cfg.model.validation_ds), "model.validation_ds")
            dev_source = open_source(dev_ds.manifest_filepath, what="model.validation_ds.manifest_filepath",
                                     sample_rate=sr)
            dev = (build_sampler(dev_source, dev_ds, section="model.validation_ds", seed=s.seed, rank=0,
                                 world_size=1, training=False), dataset)

        def save(path: Path, training: dict) -> None:
            save_asr(path, model, loop.state.global_step, training)

        loop = FinetuneLoop(s, info, FitInputs(model=model, tokenizer=tok, optimizer=optimizer, scheduler=scheduler,
                                               train_loader=loader, dev=dev, out_dir=out_dir, identity=identity,
                                               save=save, say=quiet), stops)
        if ckpt is not None:
            rows = (out_dir / LOG_TSV).read_text(encoding="utf-8").splitlines() if (out_dir / LOG_TSV).is_file() \
                else []
            loop.restore(ckpt["training"], int(ckpt["global_step"]), rows)
            del ckpt
        reason = loop.fit()
        st = loop.state
        if reason == "preempted":
            quiet(f"stopped by {stops.signal_name or 'a signal on another rank'} at step {st.global_step}: "
                  f"step-{st.global_step}.ckpt written; the same command continues the run")
        if info.is_global_zero:
            write_status(out_dir, reason, st.global_step, st.epoch)
        barrier(info)
        return FinetuneResult(out_dir, reason, st.global_step)
    finally:
        stops.uninstall()
        destroy_distributed()


def _train_sampler(cfg: DictConfig, seed: int, rank: int, world_size: int):
    from nest_ssl.data import parse_data_config
    from nest_ssl.data.manifests import open_source
    from nest_ssl.data.sampler import build_sampler

    train_ds = parse_data_config(_data_node(cfg.model.train_ds), "model.train_ds")
    source = open_source(train_ds.manifest_filepath, what="model.train_ds.manifest_filepath",
                         sample_rate=int(cfg.model.sample_rate))
    sampler = build_sampler(source, train_ds, section="model.train_ds", seed=seed, rank=rank,
                            world_size=world_size, training=True)
    return train_ds, sampler


def build_optim(cfg: DictConfig, params, max_steps: int):
    """model.optim (NeMo's: name, lr, betas, weight_decay, sched) -> (optimizer, scheduler or None); a bad key or a
    scheduler that needs trainer.max_steps without it is a ConfigError."""
    from nest_ssl.config import ConfigError
    from nest_ssl.optim import build_optimizer, build_scheduler

    try:
        optimizer = build_optimizer(params, cfg.model.optim)
        sched_cfg = cfg.model.optim.get("sched")
        scheduler = build_scheduler(optimizer, sched_cfg, max_steps=max_steps if max_steps > 0 else None) \
            if sched_cfg is not None else None
    except (ValueError, TypeError) as err:
        raise ConfigError(f"model.optim: {err}" + ("; set trainer.max_steps (--steps)" if max_steps <= 0 else ""))
    return optimizer, scheduler


def _check_data_sections(cfg: DictConfig, seed: int) -> None:
    """The data sections' keys and the sampler they make (bucket bins included), before anything is written."""
    from nest_ssl.data import parse_data_config

    _train_sampler(cfg, seed, 0, 1)
    if _dev_spec(cfg) is not None:
        parse_data_config(_data_node(cfg.model.validation_ds), "model.validation_ds")


def _data_node(node) -> dict:
    """A data section as nest_ssl.data reads it: the keys of DataLoadingConfig (sample_rate is the model's)."""
    plain = OmegaConf.to_container(node, resolve=True)
    plain.pop("sample_rate", None)
    return plain
