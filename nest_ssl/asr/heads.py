"""The ASR model interface, and the heads that implement it: CTC (`ctc_model.CTCModel`) and RNN-T
(`rnnt_model.RNNTModel`).

The fine-tuning loop (nest_ssl.asr.ft_loop) never looks inside a model: it asks for the loss of a batch and, at
validation, for greedy transcripts. Decoding and export use the rest: `model(wave, lengths) -> (out, out_lengths)`
and `model.decode(out, out_lengths, tokenizer, method)`. A head is a module path in HEADS, chosen by the config's
`head` key (`--head`); its class is built from the ASR config dict (NeMo's sections: preprocessor, spec_augment,
encoder, tokenizer and the head's: `decoder` for CTC; `decoder`, `joint`, `decoding`, ... for RNN-T).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Protocol, Sequence

import torch

from nest_ssl.asr.errors import ASRError

# head name -> "module:Class", and "module:function" making its config (NeMo's sections) from a NEST model config,
# a tokenizer kind, its vocabulary and the SpecAugment keys; a head added in its own module registers in both
HEADS: dict[str, str] = {"ctc": "nest_ssl.asr.ctc_model:CTCModel", "rnnt": "nest_ssl.asr.rnnt_model:RNNTModel"}
HEAD_CONFIGS: dict[str, str] = {"ctc": "nest_ssl.asr.ctc_model:asr_config", "rnnt": "nest_ssl.asr.ctc_model:asr_config"}


class ASRModel(Protocol):
    cfg: dict
    encoder: torch.nn.Module

    @property
    def sample_rate(self) -> int: ...

    def loss(self, audio: torch.Tensor, audio_len: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor: ...

    def greedy_texts(self, audio: torch.Tensor, audio_len: torch.Tensor, tokenizer) -> list[str]: ...


def head_of(cfg: Mapping[str, Any]) -> str:
    """The config's head; a config without the key (a NeMo archive's) is RNN-T when it has NeMo's `joint` section."""
    return str(cfg.get("head") or ("rnnt" if "joint" in cfg else "ctc"))


def check_head(name: str) -> None:
    if name not in HEADS or name not in HEAD_CONFIGS:
        raise ASRError(f"head {name!r}: not one of {sorted(HEADS)}; choose it with --head / head=")


def _load(table: dict[str, str], name: str):
    check_head(name)
    module, attr = table[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_asr_config(name: str, nest_model_cfg: Mapping[str, Any], tokenizer_kind: str, vocabulary: list[str],
                     spec_augment: Mapping[str, Any] | None = None, head_overrides: Sequence[str] = ()) -> dict:
    """`head_overrides` apply to the head's own sections (RNN-T: model_defaults.pred_hidden=320, joint.*, ...)."""
    cfg = _load(HEAD_CONFIGS, name)(nest_model_cfg, tokenizer_kind, vocabulary, spec_augment, head=name,
                                    head_overrides=head_overrides)
    cfg["head"] = name
    return cfg


def build_asr_model(cfg: Mapping[str, Any]) -> torch.nn.Module:
    return _load(HEADS, head_of(cfg))(cfg)
