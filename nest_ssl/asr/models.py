"""The two ASR heads behind one small interface: `model(wave, lengths) -> (out, out_lengths)`,
`model.loss(out, out_lengths, targets)`, `model.decode(out, out_lengths, tokenizer, method)`, `model.blank`,
`model.sample_rate`. CTC (`ctc_model.CTCModel`) or RNN-T (`rnnt_model.RNNTModel`), told apart by the config: an
RNN-T config has NeMo's `joint` section."""

from __future__ import annotations

from typing import Any, Mapping

HEADS = ("ctc", "rnnt")


def head_of(cfg: Mapping[str, Any]) -> str:
    return "rnnt" if "joint" in cfg else "ctc"


def build_asr_model(cfg: Mapping[str, Any]):
    if head_of(cfg) == "rnnt":
        from nest_ssl.asr.rnnt_model import RNNTModel

        return RNNTModel(cfg)
    from nest_ssl.asr.ctc_model import CTCModel

    return CTCModel(cfg)
