"""NeMo's RNN-T joint network (`nemo.collections.asr.modules.RNNTJoint`), with its state-dict names: `enc` (encoder
output -> joint_hidden), `pred` (prediction output -> joint_hidden), and `joint_net` = [activation, dropout (only
when > 0), Linear(joint_hidden, V+1)], so the output layer is `joint_net.2` with dropout and `joint_net.1` without.

joint(f, g) = joint_net(enc(f)[:, :, None] + pred(g)[:, None]): (B, T, U, V+1) logits, the blank last (index V).
NeMo's `fuse_loss_wer` / `fused_batch_size` / `preserve_memory` only split the same computation into sub-batches to
save memory; they are accepted and the whole batch is computed at once.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}


class RNNTJoint(nn.Module):
    """`jointnet`: {encoder_hidden, pred_hidden, joint_hidden, activation (relu|sigmoid|tanh), dropout};
    `num_classes` excludes the blank. `log_softmax`: None applies it on the CPU only (NeMo's rule: the GPU loss
    kernels take logits), True/False always/never; `forward` follows it, `joint_logits` never normalises."""

    def __init__(self, jointnet: Mapping[str, Any], num_classes: int, vocabulary: Sequence[str] | None = None,
                 log_softmax: bool | None = None, preserve_memory: bool = False, fuse_loss_wer: bool = False,
                 fused_batch_size: int | None = None):
        super().__init__()
        activation = str(jointnet["activation"]).lower()
        if activation not in ACTIVATIONS:
            raise ValueError(f"RNNTJoint: activation {activation!r}: use one of {sorted(ACTIVATIONS)}")
        self.vocabulary = list(vocabulary) if vocabulary is not None else None
        self.num_classes_with_blank = int(num_classes) + 1
        self.log_softmax = log_softmax
        self.encoder_hidden = int(jointnet["encoder_hidden"])
        self.pred_hidden = int(jointnet["pred_hidden"])
        self.joint_hidden = int(jointnet["joint_hidden"])
        dropout = float(jointnet.get("dropout", 0.0) or 0.0)
        self.pred = nn.Linear(self.pred_hidden, self.joint_hidden)
        self.enc = nn.Linear(self.encoder_hidden, self.joint_hidden)
        self.joint_net = nn.Sequential(ACTIVATIONS[activation](), *([nn.Dropout(dropout)] if dropout else []),
                                       nn.Linear(self.joint_hidden, self.num_classes_with_blank))

    def project_encoder(self, f: torch.Tensor) -> torch.Tensor:
        """(B, T, encoder_hidden) -> (B, T, joint_hidden)"""
        return self.enc(f)

    def project_prednet(self, g: torch.Tensor) -> torch.Tensor:
        """(B, U, pred_hidden) -> (B, U, joint_hidden)"""
        return self.pred(g)

    def joint_after_projection(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Projected (B, T, H), (B, U, H) -> logits (B, T, U, V+1)."""
        return self.joint_net(f.unsqueeze(2) + g.unsqueeze(1))

    def joint_logits(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Encoder (B, T, D_enc) and prediction (B, U, D_pred) outputs -> logits (B, T, U, V+1)."""
        return self.joint_after_projection(self.project_encoder(f), self.project_prednet(g))

    def forward(self, encoder_outputs: torch.Tensor, decoder_outputs: torch.Tensor) -> torch.Tensor:
        """NeMo's call: (B, D_enc, T), (B, D_pred, U) -> (B, T, U, V+1), log-softmax per `log_softmax`."""
        out = self.joint_logits(encoder_outputs.transpose(1, 2), decoder_outputs.transpose(1, 2))
        if self.log_softmax or (self.log_softmax is None and not out.is_cuda):
            out = out.log_softmax(dim=-1)
        return out
