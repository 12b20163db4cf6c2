"""The CTC recognizer as a NeMo 2.7.3 ASR model, both ways.

- export_ctc: our CTCModel and its tokenizer -> a `.nemo` that `nemo.collections.asr.models.ASRModel.restore_from`
  loads (strict) with no network: `EncDecCTCModelBPE` for a SentencePiece tokenizer (inside the archive),
  `EncDecCTCModel` with the characters as `decoder.vocabulary` (and `labels`) for the char tokenizer.
- ctc_from_nemo: a NeMo CTC `.nemo` (EncDecCTCModelBPE or EncDecCTCModel with a Conformer encoder; NeMo's own or
  one exported here) -> (our CTCModel in eval mode, its tokenizer).

The weights cross unchanged: the state-dict keys are NeMo's on both sides (ctc_model.py). The shared archive,
tokenizer and encoder parts are in .nemo_archive; this module holds the CTC head (`decoder`: ConvASRDecoder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from nest_ssl.asr.ctc_model import CTCModel
from nest_ssl.asr.errors import ASRError
from nest_ssl.asr.nemo_archive import (
    CTC_CLASSES,
    NEMO_MODELS,
    NEMO_MODULES,
    NemoASR,
    check_runnable,
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

CTC_BPE = f"{NEMO_MODELS}.ctc_bpe_models.EncDecCTCModelBPE"
CTC_CHAR = f"{NEMO_MODELS}.ctc_models.EncDecCTCModel"


def _decoder_section(feat_in: int, vocabulary: list[str]) -> dict:
    return {"_target_": f"{NEMO_MODULES}.ConvASRDecoder", "feat_in": int(feat_in), "num_classes": len(vocabulary),
            "vocabulary": list(vocabulary)}


def ctc_nemo_config(model: CTCModel, tok) -> tuple[dict, str, dict[str, bytes]]:
    """(model_config.yaml's model section, NeMo's class path, artifacts) for our CTC model and tokenizer."""
    cfg, vocabulary, artifacts = head_config(model, tok, "CTC")
    cfg["decoder"] = _decoder_section(model.cfg["decoder"]["feat_in"], vocabulary)
    target = CTC_CHAR if "labels" in cfg else CTC_BPE
    cfg["ctc_reduction"] = "mean_batch"  # our loss's reduction (NeMo's yaml says mean_volume)
    cfg["interctc"] = {"loss_weights": [], "apply_at_layers": []}
    # keys in the order of NeMo's yaml: data, tokenizer, preprocessor, spec_augment, encoder, decoder, optim
    order = ["sample_rate", "labels", "log_prediction", "ctc_reduction", "skip_nan_grad", "train_ds", "validation_ds",
             "test_ds", "tokenizer", "preprocessor", "spec_augment", "encoder", "decoder", "interctc", "optim"]
    return {k: cfg[k] for k in order if k in cfg}, target, artifacts


def export_ctc(model: CTCModel, tok, out_path: str | Path) -> Path:
    cfg, target, artifacts = ctc_nemo_config(model, tok)
    return write_asr_nemo(out_path, cfg, model.state_dict(), target, artifacts)


# --------------------------------------------------------------------------------------------------------------
# Import


def _check_ctc(nemo: NemoASR, what: str) -> Mapping[str, Any]:
    refuse_class(nemo, what, CTC_CLASSES)
    decoder = nemo.cfg.get("decoder")
    if not isinstance(decoder, Mapping) or str(decoder.get("_target_", "")).rpartition(".")[2] != "ConvASRDecoder":
        found = decoder.get("_target_") if isinstance(decoder, Mapping) else None
        raise ASRError(f"{what} {nemo.path}: decoder._target_ is {found}; a CTC model of nest-ssl has NeMo's "
                       "ConvASRDecoder head")
    if decoder.get("add_blank", True) is not True:
        raise ASRError(f"{what} {nemo.path}: decoder.add_blank is {decoder.get('add_blank')}; nest-ssl's CTC head has "
                       "the blank as its last class")
    check_runnable(nemo, what)
    return decoder


def ctc_from_nemo(path: str | Path, what: str = "model", tokenizer=None):
    """(CTCModel in eval mode, tokenizer) of a NeMo CTC archive; `tokenizer` replaces the archive's (its size must
    match the head). Anything nest-ssl cannot run is one line naming the key."""
    nemo = read_asr_nemo(path, what)
    decoder = _check_ctc(nemo, what)
    tok = tokenizer if tokenizer is not None else tokenizer_from_nemo(nemo, decoder.get("vocabulary"), what)
    weight = head_weight(nemo, "decoder.decoder_layers.0.weight", tok, what, "CTC")
    cfg = our_sections(nemo)
    cfg["decoder"] = _decoder_section(weight.shape[1], tok.tokens())
    cfg["tokenizer"] = {"type": tok.kind}
    return model_from_archive(CTCModel, cfg, nemo, what, "CTC"), tok


def ctc_sections(path: str | Path, what: str = "--init-from") -> dict:
    """The preprocessor and encoder config of a NeMo CTC archive nest-ssl can run (checked), to build a model
    like it."""
    nemo = read_asr_nemo(path, what)
    _check_ctc(nemo, what)
    return our_sections(nemo)


def tokenizer_of_nemo(path: str | Path, what: str = "--tokenizer"):
    """The tokenizer inside a NeMo CTC archive (`--tokenizer X.nemo`); the weights are not read."""
    nemo = config_only(path, what)
    decoder = _check_ctc(nemo, what)
    return tokenizer_from_nemo(nemo, decoder.get("vocabulary"), what)


# the names nemo_archive's dispatch (asr_from_nemo, sections_from_nemo) calls every head's reader by
model_from_nemo = ctc_from_nemo
sections_of_nemo = ctc_sections
