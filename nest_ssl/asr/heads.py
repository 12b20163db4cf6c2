"""The ASR model interface the fine-tuning loop drives, and the heads that implement it.

The loop (nest_ssl.asr.ft_loop) never looks inside a model: it asks for the loss of a batch and, at validation,
for greedy transcripts. A head is a module path in HEADS, chosen by the config's `head` key (`--head`); its class is
built from the ASR config dict (NeMo's sections: preprocessor, spec_augment, encoder, decoder, tokenizer).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Protocol

import torch

from nest_ssl.asr.errors import ASRError

# head name -> "module:Class"; a head added in its own module registers here
HEADS: dict[str, str] = {"ctc": "nest_ssl.asr.ctc_model:CTCModel"}


class ASRModel(Protocol):
    cfg: dict
    encoder: torch.nn.Module

    @property
    def sample_rate(self) -> int: ...

    def loss(self, audio: torch.Tensor, audio_len: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor: ...

    def greedy_texts(self, audio: torch.Tensor, audio_len: torch.Tensor, tokenizer) -> list[str]: ...


def head_of(cfg: Mapping[str, Any]) -> str:
    return str(cfg.get("head") or "ctc")


def build_asr_model(cfg: Mapping[str, Any]) -> torch.nn.Module:
    name = head_of(cfg)
    if name not in HEADS:
        raise ASRError(f"head {name!r}: not one of {sorted(HEADS)}")
    module, cls = HEADS[name].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)
