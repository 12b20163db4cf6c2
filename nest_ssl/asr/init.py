"""Initialising the ASR model's encoder (and preprocessor) from a pretrained NEST checkpoint, loudly.

The checkpoint is read through nest_ssl.checkpoint.model.load_model (our .ckpt, a .nemo of ours or NeMo's, a NeMo
Lightning .ckpt), or is a CTC or RNN-T ASR `.nemo` (NeMo's EncDecCTCModel(BPE) / EncDecRNNT(BPE)Model, or our export),
read by nemo_ctc.py / nemo_rnnt.py: then its head (the CTC decoder; the RNN-T prediction network and joint) is taken
too when the model's head is of the same kind and size and the run's tokenizer is the archive's (same tokens, same
order), and starts at random otherwise; the report says which. A CTC archive into an RNN-T model (or the other way)
gives its encoder only.

Nothing fails silently: a config that does not match the checkpoint's encoder (layers, d_model,
mel bins), or a tensor that is missing, unexpected or of another shape, is an ASRError of one line, unless the user
names it in `skip`: a config key (`n_layers`, `d_model`, `feat_in`) or a state-dict key prefix
(`encoder.layers.1.`). The report says how many encoder tensors were loaded, and from where.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nest_ssl.asr.ctc_model import ENCODER_KEYS_CHECKED, CTCModel
from nest_ssl.asr.errors import ASRError
from nest_ssl.asr.heads import head_of

log = logging.getLogger(__name__)
PARTS = ("encoder.", "preprocessor.")


@dataclass
class InitReport:
    source: str
    loaded: int  # encoder tensors loaded
    encoder_tensors: int  # encoder tensors of the model
    preprocessor: int  # preprocessor buffers loaded
    skipped: list[str]
    head: str = ""  # from a CTC / RNN-T .nemo: whether its head was taken too, and why (not)

    def line(self) -> str:
        skipped = f"; skipped {len(self.skipped)} as asked ({', '.join(self.skipped[:3])}...)" if self.skipped else ""
        head = f"; {self.head}" if self.head else ""
        return (f"initialised {self.loaded} of {self.encoder_tensors} encoder tensors (and {self.preprocessor} "
                f"preprocessor buffers) from {self.source}{skipped}{head}")


def _skipped(key: str, skip: Sequence[str], include: Sequence[str] | None = None,
             exclude: Sequence[str] | None = None) -> bool:
    """Named by the user to be left as initialised: an --init-skip prefix, or outside NeMo's include/exclude
    selection (a tensor is loaded when its name contains one of `include` and none of `exclude`)."""
    if include and not any(i in key for i in include):
        return True
    if exclude and any(x in key for x in exclude):
        return True
    return any(key.startswith(s) for s in skip if s not in ENCODER_KEYS_CHECKED)


def check_config(model: CTCModel, ckpt_cfg: dict, source: Path, skip: Sequence[str]) -> None:
    ours = model.cfg["encoder"]
    theirs = dict(ckpt_cfg.get("encoder") or {})
    for key in ENCODER_KEYS_CHECKED:
        if key in skip or key not in theirs:
            continue
        if int(ours[key]) != int(theirs[key]):
            raise ASRError(f"--init-from {source}: its encoder has {key}={theirs[key]} but the model's config says "
                           f"{key}={ours[key]}; drop the override (or pass --init-skip {key} and the tensors to skip)")


def _read_config(path: str | Path) -> dict:
    """The model config a NEST checkpoint was written with (to build the ASR encoder like it)."""
    import os
    import tarfile

    from nest_ssl.checkpoint.nemo import load_checkpoint_any, model_config_of, read_nemo
    from nest_ssl.errors import UserError

    from nest_ssl.asr.nemo_archive import nemo_head, sections_from_nemo

    path = Path(path)
    if not path.is_file():
        raise ASRError(f"--init-from {path}: does not exist; give a NEST .ckpt or .nemo, or a CTC / RNN-T .nemo")
    if nemo_head(path):
        return sections_from_nemo(path, "--init-from")
    try:
        if path.suffix == ".nemo" or (os.access(path, os.R_OK) and tarfile.is_tarfile(path)):
            cfg, _ = read_nemo(path)
        else:
            cfg = model_config_of(load_checkpoint_any(path), path)
    except UserError as err:
        raise ASRError(f"--init-from {err}" if str(err).startswith(str(path)) else f"--init-from {path}: {err}") from None
    return {k: v for k, v in cfg.items() if k not in ("target", "nemo_version")}


def nest_parts(nest) -> dict:
    """A NEST model's preprocessor and encoder tensors under the recognizer's names."""
    theirs = {k: v for k, v in nest.state_dict().items() if k.startswith(PARTS)}
    if getattr(nest, "pre_encoder", None) is not None:
        # post_conv masking: NEST wraps the subsampler (`encoder.pre_encode.pre_encode.*`) with its mask vector
        # (`encoder.pre_encode.masking.*`); the recognizer has the subsampler alone and no masking
        theirs = {k.replace("encoder.pre_encode.pre_encode.", "encoder.pre_encode.", 1): v for k, v in theirs.items()
                  if not k.startswith("encoder.pre_encode.masking.")}
    return theirs


HEAD_NAMES = {"ctc": "CTC", "rnnt": "RNN-T"}
HEAD_PARTS = ("decoder.", "joint.")  # CTC: decoder.decoder_layers; RNN-T: decoder.prediction, joint


def _same_tokens(tokenizer, source_tok) -> bool:
    if tokenizer.kind == "char" and source_tok.kind == "char":
        return tokenizer.characters == source_tok.characters
    return tokenizer.kind != "char" and source_tok.kind != "char" and tokenizer.tokens() == source_tok.tokens()


def _continued_head(model, source, source_tok, tokenizer) -> tuple[dict, str]:
    """The head of an ASR model we start from, when the model's head is of its kind and size and the run's
    tokenizer is the same (the same tokens in the same order, so that every output class means the same); else
    nothing, and why."""
    if tokenizer is None:
        return {}, ""
    kind, theirs_kind = head_of(model.cfg), head_of(source.cfg)
    name = HEAD_NAMES[theirs_kind]
    if kind != theirs_kind:
        return {}, f"its {name} head is left out (this model's head is {HEAD_NAMES[kind]})"
    if not _same_tokens(tokenizer, source_tok):
        return {}, (f"the {name} head starts at random: the run's tokenizer is not the checkpoint's (pass --tokenizer "
                    "with the .nemo itself to continue its head)")
    theirs = {k: v for k, v in source.state_dict().items() if k.startswith(HEAD_PARTS)}
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PARTS)}
    other = sorted(k for k in set(ours) ^ set(theirs)) or [k for k in ours if ours[k].shape != theirs[k].shape]
    if other:
        k = other[0]
        sizes = (f"{tuple(theirs[k].shape)} there, {tuple(ours[k].shape)} here" if k in ours and k in theirs
                 else "there only" if k in theirs else "here only")
        return {}, f"the {name} head starts at random: it is not the checkpoint's size ({k}: {sizes})"
    classes = model.blank + 1
    if kind == "ctc":
        return theirs, f"and its CTC head ({classes} classes, the tokenizer being the same)"
    return theirs, (f"and its RNN-T head ({len(theirs)} tensors of the prediction network and joint, {classes} "
                    "classes, the tokenizer being the same)")


def init_from_pretrained(model: CTCModel, path: str | Path, skip: Sequence[str] = (), tokenizer=None,
                         include: Sequence[str] | None = None, exclude: Sequence[str] | None = None) -> InitReport:
    """Encoder and preprocessor from a NEST checkpoint or a CTC / RNN-T `.nemo`; from such a `.nemo` also its head
    when the model's is of its kind and size and `tokenizer` (the run's) is the archive's. `include`/`exclude`: NeMo's
    selection (init_from_nemo_model entries); the tensors it leaves out count as named in `skip`."""
    from nest_ssl.asr.nemo_archive import asr_from_nemo, nemo_head
    from nest_ssl.checkpoint.model import load_model
    from nest_ssl.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise ASRError(f"--init-from {path}: does not exist; give a NEST .ckpt or .nemo, or a CTC / RNN-T .nemo")
    head, head_note = {}, ""
    if nemo_head(path):
        nest, source_tok = asr_from_nemo(path, "--init-from")
        nest_cfg = nest.cfg
        head, head_note = _continued_head(model, nest, source_tok, tokenizer)
    else:
        try:
            nest, nest_cfg = load_model(path)
        except UserError as err:
            raise ASRError(f"--init-from {err}" if str(err).startswith(str(path)) else f"--init-from {path}: {err}") from None
    check_config(model, nest_cfg, path, skip)
    theirs = nest_parts(nest)
    ours = {k: v for k, v in model.state_dict().items() if k.startswith(PARTS)}
    def named(k: str) -> bool:
        return _skipped(k, skip, include, exclude)

    missing = [k for k in ours if k not in theirs and not named(k)]
    unexpected = [k for k in theirs if k not in ours and not named(k)]
    shapes = [k for k in ours if k in theirs and ours[k].shape != theirs[k].shape and not named(k)]
    for what, keys in (("has no tensor", missing), ("has a tensor the model lacks", unexpected),
                       ("has another shape for", shapes)):
        if keys:
            detail = (f" ({tuple(theirs[keys[0]].shape)} there, {tuple(ours[keys[0]].shape)} here)"
                      if what.startswith("has another") else "")
            raise ASRError(f"--init-from {path}: the checkpoint {what} {keys[0]}{detail} and {len(keys) - 1} more; "
                           f"pass --init-skip {keys[0].rsplit('.', 1)[0]}. to leave them as initialised")
    take = {k: v for k, v in theirs.items() if k in ours and not named(k)}
    left_out = sorted(k for k in head if named(k))
    if left_out:  # a head is taken whole or not at all
        head, head_note = {}, (f"its {HEAD_NAMES[head_of(nest_cfg)]} head is left out, as include/exclude or "
                               f"--init-skip name {left_out[0]}")
    take.update(head)
    with torch.no_grad():
        state = model.state_dict()
        for k, v in take.items():
            state[k].copy_(v)
    report = InitReport(source=str(path), loaded=sum(k.startswith("encoder.") for k in take),
                        encoder_tensors=sum(k.startswith("encoder.") for k in ours),
                        preprocessor=sum(k.startswith("preprocessor.") for k in take),
                        skipped=sorted(k for k in set(ours) | set(theirs) if named(k)), head=head_note)
    log.info("%s", report.line())
    return report
