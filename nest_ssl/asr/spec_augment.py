"""SpecAugment with NeMo's `SpectrogramAugmentation` keys and semantics (rect masks not implemented).

Per utterance: `freq_masks` bands of mel bins, each of width uniform in [0, freq_width], starting uniform in
[0, n_mels - freq_width]; `time_masks` spans of frames, each of width uniform in [0, time_width] where a float
time_width is a fraction of that utterance's length (NeMo's adaptive masks: max(1, int(len x time_width))), starting
uniform in [0, max(1, len - width)]. Masked values are `mask_value`. Training only; the identity in eval mode.
NeMo's fast-conformer_ctc_bpe.yaml defaults are those of DEFAULTS.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULTS = {"freq_masks": 2, "time_masks": 10, "freq_width": 27, "time_width": 0.05}


class SpecAugment(nn.Module):
    def __init__(self, freq_masks: int = 0, time_masks: int = 0, freq_width: int = 10, time_width: float = 10,
                 rect_masks: int = 0, mask_value: float = 0.0, **_ignored):
        super().__init__()
        if rect_masks:
            raise ValueError("spec_augment.rect_masks is not implemented; set it to 0")
        self.freq_masks, self.time_masks = int(freq_masks), int(time_masks)
        self.freq_width, self.time_width = int(freq_width), time_width
        self.mask_value = float(mask_value)

    @torch.no_grad()
    def forward(self, input_spec: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """input_spec (B, n_mels, T); returns a masked copy in training mode."""
        if not self.training or (self.freq_masks == 0 and self.time_masks == 0):
            return input_spec
        x = input_spec.clone()
        n_mels = x.shape[1]
        for b in range(x.shape[0]):
            n = int(length[b])
            for _ in range(self.freq_masks):
                left = int(torch.randint(0, max(1, n_mels - self.freq_width + 1), ()))
                width = int(torch.randint(0, self.freq_width + 1, ()))
                x[b, left:left + width, :] = self.mask_value
            tw = max(1, int(n * self.time_width)) if isinstance(self.time_width, float) else int(self.time_width)
            for _ in range(self.time_masks):
                left = int(torch.randint(0, max(1, n - tw + 1), ()))
                width = int(torch.randint(0, tw + 1, ()))
                x[b, :, left:left + width] = self.mask_value
        return x
