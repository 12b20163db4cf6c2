"""The RNN-T recognizer: preprocessor -> SpecAugment (training) -> our Conformer encoder -> NeMo's RNNTDecoder
(prediction network) + RNNTJoint, NeMo's `EncDecRNNTBPEModel` module and state-dict names: `decoder.prediction.embed`,
`decoder.prediction.dec_rnn.lstm.*`, `joint.enc`, `joint.pred`, `joint.joint_net.*`; the blank last (index V).

The config is a plain dict with NeMo's sections: the CTC model's (`preprocessor`, `spec_augment`, `encoder`,
`tokenizer`) and `model_defaults`, `decoder`, `joint`, `decoding`, `loss`, `rnnt_reduction`, with the values of NeMo's
fast-conformer_transducer_bpe.yaml (pred_hidden = joint_hidden = 640, one LSTM layer, dropout 0.2 in both, relu,
greedy max_symbols 10, beam_size 2, `rnnt_reduction: mean_volume`).

The loss is torchaudio's `rnnt_loss` on fp32 logits (it applies the log-softmax itself), blank last, reduced as
NeMo's RNNTLoss: `mean_batch` the batch mean of the per-utterance losses, `mean_volume` their sum over the number of
target tokens, `mean` the mean of per-token losses, `sum`.
"""

from __future__ import annotations

import copy
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from nest_ssl.asr.rnnt_decoder import RNNTDecoder
from nest_ssl.asr.rnnt_decoding import RNNTSearch, decode_tokens
from nest_ssl.asr.rnnt_joint import RNNTJoint
from nest_ssl.asr.spec_augment import SpecAugment
from nest_ssl.config import instantiate

REDUCTIONS = ("mean_batch", "mean_volume", "mean", "sum")
HEAD_SECTIONS = ("model_defaults", "decoder", "joint", "decoding", "loss", "rnnt_reduction")


def _kwargs(section: Mapping[str, Any]) -> dict:
    return {k: v for k, v in section.items() if k != "_target_"}


class RNNTModel(nn.Module):
    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        self.cfg = copy.deepcopy(dict(cfg))
        self.preprocessor = instantiate(cfg["preprocessor"])
        self.spec_augmentation = SpecAugment(**_kwargs(cfg.get("spec_augment") or {}))
        self.encoder = instantiate(cfg["encoder"])
        self.decoder = RNNTDecoder(**_kwargs(cfg["decoder"]))
        self.joint = RNNTJoint(**_kwargs(cfg["joint"]))
        self.reduction = str(cfg.get("rnnt_reduction", "mean_batch"))  # NeMo's default when the key is absent
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"rnnt_reduction {self.reduction!r}: use one of {REDUCTIONS}")

    @property
    def blank(self) -> int:
        return self.decoder.blank_idx

    @property
    def sample_rate(self) -> int:
        return int(self.cfg["preprocessor"].get("sample_rate", 16000))

    def default_search(self, beam: bool = False) -> RNNTSearch:
        """The config's `decoding` section: greedy (max_symbols) or beam (beam_size, score_norm)."""
        dec = self.cfg.get("decoding") or {}
        greedy, bs = dec.get("greedy") or {}, dec.get("beam") or {}
        return RNNTSearch(beam_size=int(bs.get("beam_size", 2)) if beam else 1,
                          max_symbols=int(greedy.get("max_symbols", 10)),
                          score_norm=bool(bs.get("score_norm", True)))

    def forward(self, input_signal: torch.Tensor, input_signal_length: torch.Tensor):
        """Waveforms (B, samples) -> (encoder output (B, d_model, T'), encoded lengths (B,)), as NeMo's."""
        feats, feat_len = self.preprocessor(input_signal=input_signal, length=input_signal_length)
        feats = self.spec_augmentation(feats, feat_len)
        return self.encoder(audio_signal=feats, length=feat_len)

    def joint_logits(self, encoded: torch.Tensor, encoded_len: torch.Tensor,
                     targets: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B, T, U+1, V+1) in fp32, padded targets (B, U), target lengths (B,))."""
        target_len = torch.tensor([len(t) for t in targets], dtype=torch.int64, device=encoded.device)
        width = int(target_len.max()) if len(targets) else 0
        padded = torch.full((len(targets), width), self.blank, dtype=torch.int64, device=encoded.device)
        for i, t in enumerate(targets):  # the padding is the blank, whose embedding is zero
            padded[i, :len(t)] = t
        g, _, _ = self.decoder(padded, target_len)
        f = encoded[:, :, :int(encoded_len.max())]
        return self.joint.joint_logits(f.transpose(1, 2), g.transpose(1, 2)).float(), padded, target_len

    def rnnt_loss(self, encoded: torch.Tensor, encoded_len: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        """RNN-T loss of the batch with the config's `rnnt_reduction`."""
        import warnings

        from nest_ssl.asr.errors import import_asr_dependency

        rnnt_loss = import_asr_dependency("torchaudio.functional").rnnt_loss
        logits, padded, target_len = self.joint_logits(encoded, encoded_len, targets)
        with warnings.catch_warnings():  # torchaudio 2.9 marks it deprecated on every call; it is there and tested
            warnings.filterwarnings("ignore", message=".*rnnt_loss has been deprecated", category=UserWarning)
            losses = rnnt_loss(logits, padded.int(), encoded_len.int(), target_len.int(), blank=self.blank,
                               reduction="none", fused_log_softmax=True)
        return reduce_losses(losses, target_len, self.reduction)

    # The fine-tuning loop's model interface (nest_ssl.asr.heads.ASRModel): loss of a batch, greedy transcripts.
    def loss(self, audio: torch.Tensor, audio_len: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
        encoded, encoded_len = self(audio, audio_len)
        return self.rnnt_loss(encoded, encoded_len, targets)

    def greedy_texts(self, audio: torch.Tensor, audio_len: torch.Tensor, tokenizer) -> list[str]:
        encoded, encoded_len = self(audio, audio_len)
        return self.decode(encoded, encoded_len, tokenizer)

    @torch.no_grad()
    def decode(self, encoded: torch.Tensor, encoded_len: torch.Tensor, tokenizer,
               search: RNNTSearch | None = None) -> list[str]:
        """Texts of a batch by greedy (the default) or beam search."""
        ids = decode_tokens(self.decoder, self.joint, encoded.transpose(1, 2), encoded_len,
                            search or self.default_search())
        return [" ".join(tokenizer.decode(t).split()) for t in ids]


def reduce_losses(losses: torch.Tensor, target_len: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean_batch":
        return losses.mean()
    if reduction == "mean_volume":
        return losses.sum() / target_len.sum().clamp(min=1)
    if reduction == "mean":
        return (losses / target_len.clamp(min=1)).mean()
    return losses.sum()


# the leaves of the head sections that follow model_defaults (NeMo's yaml interpolates them)
_LINKED = {("decoder", "prednet", "pred_hidden"): "pred_hidden", ("joint", "jointnet", "joint_hidden"): "joint_hidden",
           ("joint", "jointnet", "encoder_hidden"): "enc_hidden", ("joint", "jointnet", "pred_hidden"): "pred_hidden"}


def _relinked(base: Mapping[str, Any]) -> dict:
    """A model's (resolved) head sections with the leaves equal to their model_defaults value interpolated again,
    so that an override of model_defaults.pred_hidden resizes the head as it does NeMo's yaml."""
    out = copy.deepcopy({k: v for k, v in base.items() if k in HEAD_SECTIONS})
    defaults = out.get("model_defaults") or {}
    for (section, sub, leaf), name in _LINKED.items():
        node = (out.get(section) or {}).get(sub)
        if isinstance(node, dict) and name in defaults and node.get(leaf) == defaults[name]:
            node[leaf] = f"${{model_defaults.{name}}}"
    return out


def rnnt_sections(d_model: int, vocabulary: list[str], overrides: Iterable[str] = (),
                  base: Mapping[str, Any] | None = None) -> dict:
    """NeMo's fast-conformer_transducer_bpe.yaml `model_defaults`/`decoder`/`joint`/`decoding`/`loss` sections for
    an encoder of width d_model and this vocabulary; `overrides` (model_defaults.pred_hidden=320,
    decoder.prednet.pred_rnn_layers=2, joint.jointnet.activation=tanh, ...) apply before the interpolation. `base`:
    the head sections of a model fine-tuning starts from (a NeMo RNN-T .nemo), instead of the yaml's values."""
    from omegaconf import OmegaConf

    from nest_ssl.config import apply_overrides

    if base is not None and "decoder" in base and "joint" in base:
        cfg = OmegaConf.create(_relinked(base))
        # the joint reads the encoder being built (an encoder override may have resized it)
        if "model_defaults" in cfg:
            cfg.model_defaults.enc_hidden = d_model
            cfg.joint.jointnet.encoder_hidden = "${model_defaults.enc_hidden}"
        else:
            cfg.joint.jointnet.encoder_hidden = d_model
        cfg.decoder.vocab_size = len(vocabulary)
        cfg.joint.num_classes = len(vocabulary)
        cfg.joint.vocabulary = list(vocabulary)
        apply_overrides(cfg, list(overrides))
        return OmegaConf.to_container(cfg, resolve=True)
    cfg = OmegaConf.create({
        "model_defaults": {"enc_hidden": d_model, "pred_hidden": 640, "joint_hidden": 640},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                    "random_state_sampling": False, "blank_as_pad": True, "vocab_size": len(vocabulary),
                    "prednet": {"pred_hidden": "${model_defaults.pred_hidden}", "pred_rnn_layers": 1,
                                "t_max": None, "dropout": 0.2}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
                  "preserve_memory": False, "fuse_loss_wer": True, "fused_batch_size": 4,
                  "num_classes": len(vocabulary), "vocabulary": list(vocabulary),
                  "jointnet": {"joint_hidden": "${model_defaults.joint_hidden}", "activation": "relu",
                               "dropout": 0.2, "encoder_hidden": "${model_defaults.enc_hidden}",
                               "pred_hidden": "${model_defaults.pred_hidden}"}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10},
                     "beam": {"beam_size": 2, "return_best_hypothesis": False, "score_norm": True,
                              "tsd_max_sym_exp": 50, "alsd_max_target_len": 2.0}},
        "loss": {"loss_name": "default", "warprnnt_numba_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0}},
        "rnnt_reduction": "mean_volume",
    })
    apply_overrides(cfg, list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def split_head_overrides(overrides: Iterable[str]) -> tuple[list[str], list[str]]:
    """(overrides of the NEST model config, overrides of the RNN-T sections), by their first key."""
    nest, head = [], []
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0].split(".", 1)[0]
        (head if key in HEAD_SECTIONS else nest).append(o)
    return nest, head
