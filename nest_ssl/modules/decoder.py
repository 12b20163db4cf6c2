"""Token classifier head with NeMo 2.7.3's `MultiSoftmaxDecoder` arguments, init and state-dict names."""

from __future__ import annotations

import torch
import torch.nn as nn

from nest_ssl.modules.pointwise import pointwise_conv

_INITS = {
    "xavier_uniform": lambda w: nn.init.xavier_uniform_(w, gain=1.0),
    "xavier_normal": lambda w: nn.init.xavier_normal_(w, gain=1.0),
    "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
    "kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
}


class MultiSoftmaxDecoder(nn.Module):
    """forward(encoder_output (B, D, T')) -> log_probs (B, T', num_classes, num_decoders), or (B, T', num_classes)
    when squeeze_single and num_decoders == 1. Log-softmax is over the class axis (dim 2).

    One k=1 Conv1d produces all decoders' logits; channel c * num_decoders + h is class c of decoder h (NeMo's
    reshape order). Only the weight gets `init_mode` (NeMo's jasper init_weights); the bias keeps PyTorch's default.
    """

    def __init__(self, feat_in: int, num_classes: int, num_decoders: int = 1, init_mode: str | None = "xavier_uniform",
                 use_bias: bool = False, squeeze_single: bool = False):
        super().__init__()
        if init_mode is not None and init_mode not in _INITS:
            raise NotImplementedError(f"init_mode={init_mode!r} is not implemented; choose one of {sorted(_INITS)}")
        self.feat_in = feat_in
        self.num_classes = num_classes
        self.num_decoders = num_decoders
        self.squeeze_single = squeeze_single
        self.decoder_layers = nn.Sequential(
            nn.Conv1d(feat_in, num_classes * num_decoders, kernel_size=1, bias=use_bias)
        )
        if init_mode is not None:
            _INITS[init_mode](self.decoder_layers[0].weight)

    def forward(self, encoder_output: torch.Tensor) -> torch.Tensor:
        # The k=1 conv as a matrix product on (B, T', D): the same sums, straight into (B, T', C).
        logits = pointwise_conv(self.decoder_layers[0], encoder_output.transpose(1, 2))
        logits = logits.reshape(logits.shape[0], logits.shape[1], self.num_classes, self.num_decoders)
        if self.squeeze_single and self.num_decoders == 1:
            logits = logits.squeeze(-1)
        # The projection may run in bf16 under autocast, the normalisation over 8192 classes does not: log_softmax
        # in fp32 (CUDA's autocast does that by itself, the CPU's does not). A no-op for fp32 logits.
        with torch.autocast(logits.device.type, enabled=False):
            return torch.log_softmax(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits,
                                     dim=2)
