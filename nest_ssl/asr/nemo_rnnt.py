"""The RNN-T recognizer as a NeMo 2.7.3 ASR model, both ways.

- export_rnnt: our RNNTModel and its tokenizer -> a `.nemo` that `nemo.collections.asr.models.ASRModel.restore_from`
  loads (strict) with no network: `EncDecRNNTBPEModel` for a SentencePiece tokenizer (inside the archive),
  `EncDecRNNTModel` with the characters as `labels` and `joint.vocabulary` for the char tokenizer.
- rnnt_from_nemo: a NeMo RNN-T `.nemo` (those two classes with a Conformer encoder, NeMo's RNNTDecoder and
  RNNTJoint; NeMo's own or one exported here) -> (our RNNTModel in eval mode, its tokenizer). Refused in one line:
  hybrid RNN-T + CTC models, stateless decoders, TDT / multi-blank joints, normalised prediction networks.

The weights cross unchanged: the state-dict keys are NeMo's (rnnt_model.py). The archive, tokenizer and encoder
parts are shared with the CTC export (.nemo_archive); this module holds the RNN-T sections (`model_defaults`,
`decoder`, `joint`, `decoding`, `loss`, `rnnt_reduction`), which our config already keeps in NeMo's form.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Mapping

from nest_ssl.asr.errors import ASRError
from nest_ssl.asr.nemo_archive import (
    ASR_CLASSES,
    NEMO_MODELS,
    RNNT_CLASSES,
    NemoASR,
    check_runnable,
    class_of,
    config_only,
    head_config,
    head_weight,
    model_from_archive,
    our_sections,
    read_asr_nemo,
    refuse_class,
    tokenizer_from_nemo,
    write_asr_nemo,
)
from nest_ssl.asr.rnnt_model import HEAD_SECTIONS, RNNTModel

RNNT_BPE = f"{NEMO_MODELS}.rnnt_bpe_models.EncDecRNNTBPEModel"
RNNT_CHAR = f"{NEMO_MODELS}.rnnt_models.EncDecRNNTModel"
log = logging.getLogger(__name__)


def rnnt_nemo_config(model: RNNTModel, tok) -> tuple[dict, str, dict[str, bytes]]:
    """(model_config.yaml's model section, NeMo's class path, artifacts) for our RNN-T model and tokenizer."""
    cfg, vocabulary, artifacts = head_config(model, tok, "RNN-T")
    target = RNNT_CHAR if "labels" in cfg else RNNT_BPE
    for key in HEAD_SECTIONS:
        if key in model.cfg:
            cfg[key] = copy.deepcopy(model.cfg[key])
    cfg["decoder"]["vocab_size"] = len(vocabulary)
    cfg["joint"]["num_classes"] = len(vocabulary)
    cfg["joint"]["vocabulary"] = vocabulary
    cfg["compute_eval_loss"] = False  # NeMo's yaml: eval utterances can be long for the joint's memory
    # keys in the order of NeMo's fast-conformer_transducer_bpe.yaml
    order = ["sample_rate", "labels", "compute_eval_loss", "log_prediction", "rnnt_reduction", "skip_nan_grad",
             "model_defaults", "train_ds", "validation_ds", "test_ds", "tokenizer", "preprocessor", "spec_augment",
             "encoder", "decoder", "joint", "decoding", "loss", "optim"]
    return {k: cfg[k] for k in order if k in cfg}, target, artifacts


def export_rnnt(model: RNNTModel, tok, out_path: str | Path) -> Path:
    cfg, target, artifacts = rnnt_nemo_config(model, tok)
    return write_asr_nemo(out_path, cfg, model.state_dict(), target, artifacts)


# --------------------------------------------------------------------------------------------------------------
# Import

# NeMo's loss_name values for the standard transducer loss (kernels differ, the loss does not; training only)
RNNT_LOSSES = ("default", "warprnnt", "warprnnt_numba", "pytorch", "graph_rnnt")
# joint keys our RNNTJoint has no use for: a deprecated spelling of fuse_loss_wer (a memory setting), and the
# defaults of what _check_rnnt refuses otherwise
_JOINT_KEYS_DROPPED = ("experimental_fuse_loss_wer", "num_extra_outputs", "masking_prob")


def _refuse(nemo: NemoASR, what: str, key: str, value, why: str) -> None:
    raise ASRError(f"{what} {nemo.path}: {key} is {value!r}: {why}")


def _check_rnnt(nemo: NemoASR, what: str) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    """(decoder, joint) sections of an RNN-T archive nest-ssl can run; anything else is one line naming the key."""
    refuse_class(nemo, what, RNNT_CLASSES)
    cfg = nemo.cfg
    if cfg.get("aux_ctc"):
        raise ASRError(f"{what} {nemo.path}: aux_ctc is set: a hybrid RNN-T + CTC model, which nest-ssl does not read; "
                       f"nest-ssl loads NeMo's CTC and RNN-T models ({', '.join(ASR_CLASSES)})")
    sections = {}
    for key, cls, other in (("decoder", "RNNTDecoder", "a stateless decoder"), ("joint", "RNNTJoint",
                                                                               "a sampled or HAT joint")):
        node = cfg.get(key)
        if not isinstance(node, Mapping) or class_of(node) != cls:
            found = node.get("_target_") if isinstance(node, Mapping) else None
            _refuse(nemo, what, f"{key}._target_", found, f"an RNN-T model of nest-ssl has NeMo's {cls} there "
                    f"(not {other})")
        sections[key] = node
    decoder, joint = sections["decoder"], sections["joint"]
    if decoder.get("normalization_mode") is not None:
        _refuse(nemo, what, "decoder.normalization_mode", decoder.get("normalization_mode"),
                "a normalised prediction network is not built in nest-ssl; use a model with null there")
    if decoder.get("blank_as_pad", True) is not True:
        _refuse(nemo, what, "decoder.blank_as_pad", decoder.get("blank_as_pad"),
                "nest-ssl's prediction network embeds the blank as its padding row (NeMo's default, true)")
    if int(joint.get("num_extra_outputs") or 0) != 0:
        _refuse(nemo, what, "joint.num_extra_outputs", joint.get("num_extra_outputs"),
                "a TDT or multi-blank transducer (outputs after the blank), which nest-ssl does not run")
    if float(joint.get("masking_prob", -1.0) or -1.0) > 0:
        _refuse(nemo, what, "joint.masking_prob", joint.get("masking_prob"),
                "HAINAN's masked prediction network is not built in nest-ssl")
    loss_name = str((cfg.get("loss") or {}).get("loss_name", "default"))
    if loss_name not in RNNT_LOSSES:
        _refuse(nemo, what, "loss.loss_name", loss_name, "a TDT, multi-blank or W-transducer model, which nest-ssl "
                f"does not run (it runs the standard RNN-T: {', '.join(RNNT_LOSSES)})")
    check_runnable(nemo, what)
    return decoder, joint


def _head_sections(nemo: NemoASR, tok=None) -> dict:
    """The archive's model_defaults/decoder/joint/decoding/loss/rnnt_reduction as our RNNTModel takes them; with
    `tok`, sized and labelled for it."""
    out = {key: copy.deepcopy(nemo.cfg[key]) for key in HEAD_SECTIONS if nemo.cfg.get(key) is not None}
    out["joint"] = {k: v for k, v in out["joint"].items() if k not in _JOINT_KEYS_DROPPED}
    decoding = out.setdefault("decoding", {"strategy": "greedy_batch"})
    greedy = decoding.setdefault("greedy", {})
    # NeMo reads max_symbols, or the older max_symbols_per_step; null is no cap there, which greedy here lacks
    cap = greedy.get("max_symbols") or greedy.get("max_symbols_per_step")
    if cap is None:
        log.warning("%s: decoding.greedy.max_symbols is null (no cap in NeMo); greedy search here stops at 10 tokens "
                    "per frame", nemo.path)
    greedy["max_symbols"] = int(cap or 10)
    greedy.pop("max_symbols_per_step", None)
    if tok is not None:
        out["decoder"]["vocab_size"] = tok.vocab_size
        out["joint"]["num_classes"] = tok.vocab_size
        out["joint"]["vocabulary"] = tok.tokens()
    return out


def _labels(nemo: NemoASR, joint: Mapping[str, Any]) -> list[str] | None:
    """A character model's labels: NeMo's EncDecRNNTModel keeps them as `joint.vocabulary` and `labels`."""
    return joint.get("vocabulary") or nemo.cfg.get("labels")


def rnnt_from_nemo(path: str | Path, what: str = "model", tokenizer=None):
    """(RNNTModel in eval mode, tokenizer) of a NeMo RNN-T archive (EncDecRNNTBPEModel or EncDecRNNTModel with a
    Conformer encoder; NeMo's own or one exported here); `tokenizer` replaces the archive's (its size must match the
    head). The blank is the last class on both sides. Anything nest-ssl cannot run is one line naming the key."""
    nemo = read_asr_nemo(path, what)
    _, joint = _check_rnnt(nemo, what)
    tok = tokenizer if tokenizer is not None else tokenizer_from_nemo(nemo, _labels(nemo, joint), what)
    head_weight(nemo, "decoder.prediction.embed.weight", tok, what, "RNN-T", article="an")
    cfg = {**our_sections(nemo), **_head_sections(nemo, tok), "tokenizer": {"type": tok.kind}}
    return model_from_archive(RNNTModel, cfg, nemo, what, "RNN-T"), tok


def rnnt_sections_of_nemo(path: str | Path, what: str = "--init-from") -> dict:
    """The preprocessor, encoder and RNN-T head config of a NeMo RNN-T archive nest-ssl can run (checked), to build a
    model like it (a `--head rnnt` fine-tuning resizes the head for its tokenizer)."""
    nemo = read_asr_nemo(path, what)
    _check_rnnt(nemo, what)
    return {**our_sections(nemo), **_head_sections(nemo)}


def tokenizer_of_nemo(path: str | Path, what: str = "--tokenizer"):
    """The tokenizer inside a NeMo RNN-T archive (`--tokenizer X.nemo`); the weights are not read."""
    nemo = config_only(path, what)
    _, joint = _check_rnnt(nemo, what)
    return tokenizer_from_nemo(nemo, _labels(nemo, joint), what)


# the names nemo_archive's dispatch (asr_from_nemo, sections_from_nemo) calls every head's reader by
model_from_nemo = rnnt_from_nemo
sections_of_nemo = rnnt_sections_of_nemo
