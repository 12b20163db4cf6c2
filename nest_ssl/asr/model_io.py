"""A fine-tuned ASR model (CTC or RNN-T) on disk: `step-N.ckpt` files (our checkpoint format: digest, atomic
write) holding the model config and weights, beside the `tokenizer/` folder of the run. `load_asr` reads one
checkpoint, a run folder (its last checkpoint), the average of a run's last N checkpoints, or a NeMo CTC or RNN-T
`.nemo` (nemo_ctc.py, nemo_rnnt.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from nest_ssl.asr.average import average_state_dicts, last_checkpoints
from nest_ssl.asr.errors import ASRError
from nest_ssl.asr.heads import build_asr_model, head_of
from nest_ssl.asr.tokenizer import load_tokenizer

KINDS = {"ctc": "nest_ssl.asr.ctc", "rnnt": "nest_ssl.asr.rnnt"}  # the checkpoint's `kind`, by head


def save_asr(path: Path, model, step: int, training: dict | None = None) -> Path:
    """`training`: what resuming needs (optimizer, RNG states, the rest of the epoch's order, the data's identity)."""
    from nest_ssl.checkpoint import save_checkpoint

    ckpt = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "asr_config": model.cfg, "kind": KINDS[head_of(model.cfg)], "global_step": step}
    if training is not None:
        ckpt["training"] = training
    return save_checkpoint(ckpt, path)


def read_asr_checkpoint(path: Path) -> dict:
    return _read(path)


def _read(path: Path) -> dict:
    from nest_ssl.checkpoint import load_checkpoint
    from nest_ssl.errors import UserError

    try:
        ckpt = load_checkpoint(path)
    except UserError as err:
        raise ASRError(f"model {err}") from None
    if ckpt.get("kind") not in KINDS.values():
        raise ASRError(f"model {path}: not an ASR model of `nest-ssl finetune` (a pretrained NEST checkpoint? "
                       "fine-tune it first)")
    return ckpt


def _step_of(path: Path) -> int:
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        raise ASRError(f"--avg: {path} is not a step-N.ckpt of `nest-ssl finetune`; give the run folder") from None


def load_asr(model: str | Path, avg: int = 1, tokenizer_dir: str | Path | None = None):
    """(CTCModel or RNNTModel in eval mode, tokenizer, [checkpoints used]). `model` may also be a NeMo CTC or RNN-T
    `.nemo` (NeMo's own or one of `nest-ssl export-asr`), whose tokenizer is read from the archive unless
    `tokenizer_dir` is given."""
    from nest_ssl.asr.nemo_archive import is_nemo_archive

    model = Path(model)
    if is_nemo_archive(model):
        from nest_ssl.asr.nemo_archive import asr_from_nemo

        if avg > 1:
            raise ASRError(f"--avg {avg}: {model} is one model (a .nemo archive); --avg averages the checkpoints of a "
                           "`nest-ssl finetune` run folder")
        tok = load_tokenizer(tokenizer_dir) if tokenizer_dir else None
        net, tok = asr_from_nemo(model, "model", tok)
        return net, tok, [model]
    if model.is_dir():
        paths = last_checkpoints(model, avg)
        run_dir = model
    elif model.is_file():
        run_dir = model.parent
        paths = [model]
        if avg > 1:
            step = _step_of(model)
            earlier = [p for p in run_dir.glob("step-*.ckpt") if _step_of(p) <= step]
            if len(earlier) < avg:
                raise ASRError(f"--avg {avg}: {run_dir} holds only {len(earlier)} step checkpoints up to {model.name}")
            paths = sorted(earlier, key=_step_of)[-avg:]
    else:
        raise ASRError(f"model {model}: does not exist; give a step-*.ckpt or the --out-dir of `nest-ssl finetune`")
    ckpts = [_read(p) for p in paths]
    cfg = ckpts[-1]["asr_config"]
    net = build_asr_model(cfg)
    state = average_state_dicts([c["state_dict"] for c in ckpts]) if len(ckpts) > 1 else ckpts[0]["state_dict"]
    net.load_state_dict(state)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else run_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise ASRError(f"model {model}: no tokenizer folder at {tok_dir}; pass --tokenizer DIR")
    tok = load_tokenizer(tok_dir, cfg.get("tokenizer", {}).get("type"))
    if tok.vocab_size != net.blank:
        raise ASRError(f"tokenizer {tok_dir}: {tok.vocab_size} tokens but the model has {net.blank}; give the "
                       "tokenizer the model was fine-tuned with")
    return net.eval(), tok, paths
