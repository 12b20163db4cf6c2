"""Masked token prediction loss with NeMo 2.7.3's `MLMLoss` / `MultiMLMLoss` arguments and math.

A token (combine_time_steps frames) counts as masked when the mean of its masks over those frames and all feature
bins is > mask_threshold (with 8 frames and 0.8: at least 7 masked frames). The loss is the NLL averaged over all
masked tokens of the batch (token-weighted, not per utterance), then averaged over decoders.

Deliberate deviation: NeMo returns NaN when no token of the batch is masked; we return a zero that is still part of
the graph (so backward and DDP gradient all-reduce work) and the model reports the batch as empty. The masked tokens
are not picked out by boolean indexing (which makes the host wait for the device) but weighted: the same mean.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def token_mask(masks: torch.Tensor, combine_time_steps: int, mask_threshold: float) -> torch.Tensor:
    """Frame masks (B, D, T) -> bool (B, T // combine_time_steps): tokens whose frames are > threshold masked."""
    B, _, T = masks.shape
    if T % combine_time_steps:
        raise ValueError(f"mask length {T} is not a multiple of combine_time_steps={combine_time_steps}")
    grouped = masks.transpose(1, 2).reshape(B, T // combine_time_steps, -1)
    return grouped.mean(-1) > mask_threshold


def fit_tokens(tokens: torch.Tensor, width: int) -> torch.Tensor:
    """Targets (B, T'', ...) cropped, or right-padded with 0, to the `width` tokens of the masks, as NeMo does."""
    if tokens.shape[1] >= width:
        return tokens[:, :width]
    pad = tokens.new_zeros((tokens.shape[0], width - tokens.shape[1]) + tuple(tokens.shape[2:]))
    return torch.cat([tokens, pad], dim=1)


class MLMLoss(nn.Module):
    """NLL over masked tokens for one decoder: forward(decoder_outputs (B,T',C), targets (B,T''), ..., masks)."""

    def __init__(self, combine_time_steps: int = 1, mask_threshold: float = 0.8):
        super().__init__()
        self.combine_time_steps = combine_time_steps
        self.mask_threshold = mask_threshold

    def token_mask(self, masks: torch.Tensor) -> torch.Tensor:
        return token_mask(masks, self.combine_time_steps, self.mask_threshold)

    def forward(self, decoder_outputs, targets, decoder_lengths=None, target_lengths=None, spec_masks=None,
                masks=None):
        # decoder_lengths / target_lengths are accepted for NeMo's signature; padding is never masked, so unused.
        masks = spec_masks if masks is None else masks
        selected = self.token_mask(masks)
        return self.nll(decoder_outputs, fit_tokens(targets, selected.shape[-1]), selected)

    @staticmethod
    def nll(log_probs: torch.Tensor, targets: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
        """Mean NLL over the selected tokens: log-probs (B, T', C), targets (B, T'), selected bool (B, T').

        NeMo's `nll_loss(log_probs[selected], targets[selected])`, computed without selecting: boolean indexing has
        a data-dependent size, which makes the host wait for the device. The unselected tokens are replaced by 0
        (not multiplied: a -inf log-prob times 0 is NaN), so they take no part in the value nor the gradient; with
        no token selected the result is an exact 0 that is still part of the graph.
        """
        # fp32 under autocast as well: the mean over many tokens must not round in bf16 (a no-op for fp32 inputs).
        lp = log_probs.float() if log_probs.dtype in (torch.float16, torch.bfloat16) else log_probs
        with torch.autocast(lp.device.type, enabled=False):
            picked = lp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
            picked = torch.where(selected, picked, torch.zeros((), dtype=picked.dtype, device=picked.device))
            return -picked.sum() / selected.sum().clamp(min=1).to(picked.dtype)


class MultiMLMLoss(nn.Module):
    """forward(masks (B,D,T), decoder_outputs (B,T',C,H), targets (B,T',H), decoder_lengths=None) -> scalar.

    With squeeze_single and num_decoders == 1 the decoder axis is absent: (B,T',C) and (B,T').
    """

    def __init__(self, combine_time_steps: int = 1, mask_threshold: float = 0.8, num_decoders: int = 1,
                 squeeze_single: bool = False):
        super().__init__()
        self.num_decoders = num_decoders
        self.squeeze_single = squeeze_single
        self.mlm_loss = MLMLoss(combine_time_steps, mask_threshold)

    @property
    def combine_time_steps(self) -> int:
        return self.mlm_loss.combine_time_steps

    @property
    def mask_threshold(self) -> float:
        return self.mlm_loss.mask_threshold

    def token_mask(self, masks: torch.Tensor) -> torch.Tensor:
        """bool (B, T'): the tokens the loss is computed on."""
        return self.mlm_loss.token_mask(masks)

    def forward(self, masks, decoder_outputs, targets, decoder_lengths=None, target_lengths=None):
        if self.squeeze_single and self.num_decoders == 1:
            return self.mlm_loss(decoder_outputs=decoder_outputs, targets=targets, spec_masks=masks)
        loss = 0.0
        for i in range(self.num_decoders):
            loss = loss + self.mlm_loss(decoder_outputs=decoder_outputs[:, :, :, i], targets=targets[:, :, i],
                                        spec_masks=masks)
        return loss / self.num_decoders
