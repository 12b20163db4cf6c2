"""The RNN-T recognizer as a NeMo 2.7.3 ASR model: our RNNTModel and its tokenizer -> a `.nemo` that
`nemo.collections.asr.models.ASRModel.restore_from` loads (strict) with no network: `EncDecRNNTBPEModel` for a
SentencePiece tokenizer (inside the archive), `EncDecRNNTModel` with the characters as `labels` and
`joint.vocabulary` for the char tokenizer.

The weights cross unchanged: the state-dict keys are NeMo's (rnnt_model.py). The archive, tokenizer and encoder
parts are shared with the CTC export (.nemo_archive); this module holds the RNN-T sections (`model_defaults`,
`decoder`, `joint`, `decoding`, `loss`, `rnnt_reduction`), which our config already keeps in NeMo's form.
"""

from __future__ import annotations

import copy
from pathlib import Path

from nest_ssl.asr.nemo_archive import NEMO_MODELS, head_config, write_asr_nemo
from nest_ssl.asr.rnnt_model import HEAD_SECTIONS, RNNTModel

RNNT_BPE = f"{NEMO_MODELS}.rnnt_bpe_models.EncDecRNNTBPEModel"
RNNT_CHAR = f"{NEMO_MODELS}.rnnt_models.EncDecRNNTModel"


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
