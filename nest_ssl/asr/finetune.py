"""`nest-ssl finetune`: CTC or RNN-T (`--head`) fine-tuning of the Conformer encoder, a simple loop of its own.

Everything is checked before anything is written: the manifests, every transcript against the tokenizer (named by
file and line), the model config against the pretrained checkpoint. Then the run folder gets `tokenizer/`,
`step-N.ckpt` every `save_every` steps and at the end (kept, for `--avg`), `log.tsv` (step, loss, dev WER/CER
at the saved steps) and `finetune.log` (what was printed: where the encoder came from, progress). Run again on the same folder, it resumes from the last checkpoint (model, optimizer, RNG states
and the rest of the epoch's order are in it), so the losses are those of an uninterrupted run; `--steps` may grow.

What this loop is not (yet): the main trainer's data pipeline and machinery (lhotse bucketing, DDP, bf16, exact
resume, the run lock, TensorBoard); it holds the training audio in memory. See docs/asr.md.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from nest_ssl.asr.audio import check_audio, load_audio
from nest_ssl.asr.ctc_model import asr_config
from nest_ssl.asr.errors import ASRError
from nest_ssl.asr.init import InitReport, init_from_pretrained
from nest_ssl.asr.manifest import read_manifest, read_nonempty_manifest
from nest_ssl.asr.models import build_asr_model
from nest_ssl.asr.model_io import save_asr
from nest_ssl.asr.tokenizer import load_tokenizer, train_tokenizer

log = logging.getLogger(__name__)


@dataclass
class FinetuneOptions:
    train_manifest: Path
    out_dir: Path
    dev_manifest: Path | None = None
    tokenizer_dir: Path | None = None  # an existing tokenizer; else one is trained from the train transcripts
    tokenizer_type: str = "bpe"
    vocab_size: int = 128
    init_from: Path | None = None
    init_skip: list[str] = field(default_factory=list)
    config_name: str = "nest_tiny"  # used without --init-from
    overrides: list[str] = field(default_factory=list)  # model-section keys: encoder.n_layers=4
    spec_augment: dict = field(default_factory=dict)  # NeMo's keys; empty = no masking
    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 8
    seed: int = 0
    save_every: int = 50
    freeze_encoder_steps: int = 0
    head: str = "ctc"  # or "rnnt": overrides of its sections (model_defaults., decoder., joint., ...) go to them


def _base_config(opts: FinetuneOptions, overrides: Sequence[str]) -> dict:
    from omegaconf import OmegaConf

    from nest_ssl.config import apply_overrides, load_config

    if opts.init_from is not None:
        from nest_ssl.asr.init import _read_config

        cfg = OmegaConf.create(_read_config(opts.init_from))
        apply_overrides(cfg, overrides)
        return OmegaConf.to_container(cfg, resolve=True)
    full = load_config(config_name=opts.config_name, resolve=False)  # overrides first: `${...}` follow them
    apply_overrides(full.model, overrides)
    return OmegaConf.to_container(full, resolve=True)["model"]


def prepare(opts: FinetuneOptions):
    """Every check, nothing written: (model, tokenizer, init report, train items, dev items)."""
    train = read_nonempty_manifest(opts.train_manifest, "--train-manifest")
    dev = read_manifest(opts.dev_manifest) if opts.dev_manifest else []
    if opts.tokenizer_dir is not None:
        tok = load_tokenizer(opts.tokenizer_dir, opts.tokenizer_type)
    else:
        tok = train_tokenizer([u.text for u in train], opts.tokenizer_type, opts.vocab_size)
    targets = [torch.tensor(tok.encode(u.text, u.where), dtype=torch.int64) for u in train]
    for u in dev:
        tok.encode(u.text, u.where)
    check_audio((u.audio, u.where) for u in [*train, *dev])
    vocabulary = tok.tokens()
    overrides, head_overrides = list(opts.overrides), []
    if opts.head == "rnnt":
        from nest_ssl.asr.rnnt_model import split_head_overrides

        overrides, head_overrides = split_head_overrides(opts.overrides)
    cfg = asr_config(_base_config(opts, overrides), tok.kind, vocabulary, opts.spec_augment, opts.head,
                     head_overrides)
    torch.manual_seed(opts.seed)
    model = build_asr_model(cfg)
    report = init_from_pretrained(model, opts.init_from, opts.init_skip, tok) if opts.init_from else None
    return model, tok, report, list(zip(train, targets)), dev


def _last_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(out_dir.glob("step-*.ckpt"), key=lambda p: int(p.stem.split("-")[1])) if out_dir.is_dir() else []
    return found[-1] if found else None


def _data_identity(opts: FinetuneOptions, train) -> dict:
    return {"train_manifest": str(opts.train_manifest.resolve()), "utterances": len(train)}


def resume_state(opts: FinetuneOptions, path: Path):
    """(model, tokenizer, train, dev, training state) of the run in --out-dir, checked against these options."""
    from nest_ssl.asr.model_io import read_asr_checkpoint

    ckpt = read_asr_checkpoint(path)
    state = ckpt.get("training")
    if state is None:
        raise ASRError(f"--out-dir {opts.out_dir}: {path.name} cannot be resumed from (no training state); "
                       "choose another folder")
    tok = load_tokenizer(opts.out_dir / "tokenizer", ckpt["asr_config"].get("tokenizer", {}).get("type"))
    train = read_nonempty_manifest(opts.train_manifest, "--train-manifest")
    if state["data"] != _data_identity(opts, train):
        raise ASRError(f"--out-dir {opts.out_dir}: holds a run on {state['data']['train_manifest']} "
                       f"({state['data']['utterances']} utterances), not this --train-manifest; choose another folder")
    targets = [torch.tensor(tok.encode(u.text, u.where), dtype=torch.int64) for u in train]
    dev = read_manifest(opts.dev_manifest) if opts.dev_manifest else []
    for u in dev:
        tok.encode(u.text, u.where)
    model = build_asr_model(ckpt["asr_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model, tok, list(zip(train, targets)), dev, {**state, "step": int(ckpt["global_step"])}


def finetune(opts: FinetuneOptions, say: Callable[[str], None] = print) -> Path:
    """Runs (or resumes) the fine-tuning; every line `say` gets also goes to OUT/finetune.log."""
    pending: list[str] = []

    def note(line: str) -> None:
        say(line)
        log.info("%s", line)
        if opts.out_dir.is_dir():
            with open(opts.out_dir / "finetune.log", "a", encoding="utf-8") as f:
                f.write("".join(x + "\n" for x in [*pending, line]))
            pending.clear()
        else:
            pending.append(line)

    last = _last_checkpoint(opts.out_dir)
    if last is not None:
        model, tok, train, dev, state = resume_state(opts, last)
        note(f"resuming from {last} (step {state['step']}); the run's tokenizer and model config apply")
    else:
        model, tok, report, train, dev = prepare(opts)
        note(report.line() if report else "encoder initialised at random (no --init-from)")
        state = None
    sr = model.sample_rate
    audio = [load_audio(u.audio, sr) for u, _ in train]
    dev_audio = [u.audio for u in dev]
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    with open(opts.out_dir / "finetune.log", "a", encoding="utf-8") as f:  # what was said before the folder existed
        f.write("".join(x + "\n" for x in pending))
    pending.clear()
    optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=1e-3)
    rng = random.Random(opts.seed)
    order: list[int] = []
    start = 1
    if state is None:
        tok.save(opts.out_dir / "tokenizer")
        rows = ["step\tloss\tdev_wer\tdev_cer"]
    else:
        optim.load_state_dict(state["optimizer"])
        rng.setstate((state["python_rng"][0], tuple(state["python_rng"][1]), state["python_rng"][2]))
        torch.set_rng_state(state["torch_rng"])
        order = list(state["order"])
        start = state["step"] + 1
        # the log up to the checkpoint; lines written after it (by the run that was stopped) are done again
        rows = [r for r in (opts.out_dir / "log.tsv").read_text(encoding="utf-8").splitlines()
                if r.split("\t")[0] == "step" or int(r.split("\t")[0]) <= state["step"]]
    log_file = open(opts.out_dir / "log.tsv", "w", encoding="utf-8")
    log_file.write("".join(r + "\n" for r in rows))
    log_file.flush()
    for step in range(start, opts.steps + 1):
        if len(order) < opts.batch_size:
            more = list(range(len(train)))
            rng.shuffle(more)
            order += more
        idx, order = order[:opts.batch_size], order[opts.batch_size:]
        frozen = step <= opts.freeze_encoder_steps
        for p in model.encoder.parameters():
            p.requires_grad_(not frozen)
        model.train()
        lengths = torch.tensor([len(audio[i]) for i in idx])
        batch = torch.zeros(len(idx), int(lengths.max()))
        for j, i in enumerate(idx):
            batch[j, :len(audio[i])] = audio[i]
        out, out_len = model(batch, lengths)
        loss = model.loss(out, out_len, [train[i][1] for i in idx])
        optim.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        wer_s = cer_s = ""
        if step % opts.save_every == 0 or step == opts.steps:
            if dev:
                from nest_ssl.asr.results import cer, wer
                from nest_ssl.asr.transcribe import transcribe

                model.eval()
                with torch.random.fork_rng(devices=[]):  # decoding draws nothing, but keep training's RNG apart
                    hyps = transcribe(model, tok, dev_audio).texts
                refs = [u.text for u in dev]
                wer_s, cer_s = f"{wer(refs, hyps).rate:.4f}", f"{cer(refs, hyps).rate:.4f}"
            py_state = rng.getstate()
            training = {"optimizer": optim.state_dict(), "torch_rng": torch.get_rng_state(),
                        "python_rng": [py_state[0], list(py_state[1]), py_state[2]], "order": list(order),
                        "data": _data_identity(opts, train)}
            log_file.write(f"{step}\t{loss.item():.6f}\t{wer_s}\t{cer_s}\n")
            log_file.flush()
            save_asr(opts.out_dir / f"step-{step}.ckpt", model, step, training)
            note(f"step {step}: loss {loss.item():.4f}" + (f", dev WER {wer_s} CER {cer_s}" if dev else ""))
        else:
            log_file.write(f"{step}\t{loss.item():.6f}\t\t\n")
    log_file.close()
    return opts.out_dir
