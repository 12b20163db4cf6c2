"""The CTC recognizer: preprocessor -> SpecAugment (training) -> our Conformer encoder -> NeMo's ConvASRDecoder.

Module names are NeMo's `EncDecCTCModel(BPE)` ones, so the state-dict keys are too: `preprocessor.*`, `encoder.*`,
`decoder.decoder_layers.0.weight` (V+1, d_model, 1) and `decoder.decoder_layers.0.bias` (V+1); the CTC blank is the
last class (index V), as in NeMo. The config is a plain dict with NeMo's section names:
`{preprocessor, spec_augment, encoder, decoder: {feat_in, num_classes, vocabulary}, tokenizer: {type}}`.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nest_ssl.asr.spec_augment import SpecAugment
from nest_ssl.config import instantiate

ENCODER_KEYS_CHECKED = ("n_layers", "d_model", "feat_in")  # what must match a checkpoint's encoder


class ConvASRDecoder(nn.Module):
    """NeMo's CTC head: a 1x1 convolution to V+1 classes, log-softmax over them.

    `upsample` > 1 (ours, not NeMo's; `nest-ssl evaluate` uses it for characters, which outrun 80 ms frames): the
    convolution gives `upsample` x (V+1) outputs per frame, read as `upsample` consecutive label positions."""

    def __init__(self, feat_in: int, num_classes: int, upsample: int = 1):
        super().__init__()
        if upsample < 1:
            raise ValueError(f"decoder.upsample must be at least 1, got {upsample}")
        self.num_classes_with_blank = num_classes + 1
        self.upsample = int(upsample)
        self.decoder_layers = nn.Sequential(
            nn.Conv1d(feat_in, self.num_classes_with_blank * self.upsample, kernel_size=1, bias=True))

    def forward(self, encoder_output: torch.Tensor) -> torch.Tensor:
        """(B, d_model, T') -> log-probabilities (B, T' x upsample, V+1)."""
        logits = self.decoder_layers(encoder_output).transpose(1, 2)
        if self.upsample > 1:
            b, t, _ = logits.shape
            logits = logits.reshape(b, t * self.upsample, self.num_classes_with_blank)
        return F.log_softmax(logits.float(), dim=-1)


class CTCModel(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        self.cfg = copy.deepcopy(dict(cfg))
        self.preprocessor = instantiate(cfg["preprocessor"])
        self.spec_augmentation = SpecAugment(**{k: v for k, v in (cfg.get("spec_augment") or {}).items()
                                                if k != "_target_"})
        self.encoder = instantiate(cfg["encoder"])
        self.decoder = ConvASRDecoder(cfg["decoder"]["feat_in"], cfg["decoder"]["num_classes"],
                                      int(cfg["decoder"].get("upsample", 1)))

    @property
    def blank(self) -> int:
        return int(self.cfg["decoder"]["num_classes"])

    @property
    def sample_rate(self) -> int:
        return int(self.cfg["preprocessor"].get("sample_rate", 16000))

    def forward(self, input_signal: torch.Tensor, input_signal_length: torch.Tensor):
        """Waveforms (B, samples) -> (log_probs (B, T', V+1), encoded lengths (B,))."""
        feats, feat_len = self.preprocessor(input_signal=input_signal, length=input_signal_length)
        feats = self.spec_augmentation(feats, feat_len)
        encoded, encoded_len = self.encoder(audio_signal=feats, length=feat_len)
        return self.decoder(encoded), encoded_len * self.decoder.upsample

    def ctc_loss(self, log_probs, lengths, targets: list[torch.Tensor]) -> torch.Tensor:
        """NeMo's CTC loss reductions (`ctc_reduction`): `mean_batch` (default), the per-utterance sum averaged over
        the batch; `mean_volume`, the sum over the batch divided by its target tokens."""
        target_len = torch.tensor([len(t) for t in targets], dtype=torch.int64)
        flat = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.int64)
        total = F.ctc_loss(log_probs.transpose(0, 1), flat.to(log_probs.device), lengths, target_len.to(lengths.device),
                           blank=self.blank, reduction="sum", zero_infinity=True)
        if self.cfg.get("ctc_reduction", "mean_batch") == "mean_volume":
            return total / max(1, int(target_len.sum()))
        return total / max(1, len(targets))

    # The fine-tuning loop's model interface (nest_ssl.asr.heads.ASRModel): loss of a batch, greedy transcripts.
    def loss(self, audio: torch.Tensor, audio_len: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        log_probs, enc_len = self(audio, audio_len)
        return self.ctc_loss(log_probs, enc_len, targets)

    def greedy_texts(self, audio: torch.Tensor, audio_len: torch.Tensor, tokenizer) -> list[str]:
        from nest_ssl.asr.decode import decode_batch

        log_probs, enc_len = self(audio, audio_len)
        return decode_batch(log_probs.float().cpu(), enc_len.cpu(), tokenizer, self.blank)

    def decode(self, log_probs, lengths, tokenizer, lm=None) -> list[str]:
        """Texts of a batch: greedy, or beam search with a word LM (a `decode.LMDecoder`)."""
        from nest_ssl.asr.decode import decode_batch

        return decode_batch(log_probs, lengths, tokenizer, self.blank, lm)


def asr_config(nest_model_cfg: Mapping[str, Any], tokenizer_kind: str, vocabulary: list[str],
               spec_augment: Mapping[str, Any] | None = None, head: str = "ctc",
               head_overrides: Sequence[str] = ()) -> dict:
    """The ASR model's config from a NEST model config (its preprocessor and encoder) and a tokenizer: NeMo's CTC
    `decoder` section, or for head="rnnt" NeMo's RNN-T sections (`rnnt_model.rnnt_sections`, `head_overrides`
    applied to them)."""
    from omegaconf import OmegaConf

    nest = OmegaConf.to_container(OmegaConf.create(dict(nest_model_cfg)), resolve=True)
    encoder = dict(nest["encoder"])
    d_model = int(encoder["d_model"])
    if encoder.get("feat_out", -1) not in (-1, None):
        d_model = int(encoder["feat_out"])
    cfg = {
        "sample_rate": int(nest["preprocessor"].get("sample_rate", 16000)),
        "preprocessor": dict(nest["preprocessor"]),
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation",
                         **dict(spec_augment or {})},
        "encoder": encoder,
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": d_model,
                    "num_classes": len(vocabulary), "vocabulary": list(vocabulary)},
        "tokenizer": {"type": tokenizer_kind},
    }
    if head == "rnnt":
        from nest_ssl.asr.rnnt_model import HEAD_SECTIONS, rnnt_sections

        del cfg["decoder"]
        # a NeMo RNN-T .nemo started from (nest_model_cfg holds its head sections): its head sizes, not the yaml's
        base = {k: v for k, v in nest.items() if k in HEAD_SECTIONS} or None
        cfg.update(rnnt_sections(d_model, list(vocabulary), head_overrides, base))
    elif head != "ctc" or head_overrides:
        raise ValueError(f"asr_config: head {head!r} with overrides {list(head_overrides)}: not a CTC config")
    return cfg
