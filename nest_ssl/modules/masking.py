"""Random block masking with NeMo 2.7.3's `RandomBlockMasking` arguments, parameter and distribution.

NeMo draws blocks per utterance in a Python loop; here the whole batch is drawn at once:
- n distinct starts out of `count` candidates = the n smallest of `count` i.i.d. uniform keys (a uniformly random
  n-subset, exactly like the first n entries of NeMo's randperm(count));
- frame coverage = cumulative sum of a difference array (+1 at each start, -1 at each clamped end) > 0.
The random numbers consumed differ from NeMo's, the distribution does not. Padding is never masked: every block end
is clamped to the utterance length (NeMo's allow_overlap=False path and its short rule can run past it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from nest_ssl.modules.frozen import FreezableModule

# Utterances where one block would cover more than this fraction get the short rule instead: one 8-frame block at 0.
_SHORT_BLOCK = 8


class RandomBlockMasking(FreezableModule):
    """forward(input_feats (B, D, T), input_lengths (B,)) -> (masked_feats, masks), both (B, D, T).

    Masked frames have all D features replaced by `mask_embedding`; masks is 1.0 there and 0.0 elsewhere.
    """

    def __init__(self, feat_in: int, mask_prob: float = 0.5, block_size: int = 48, mask_value: float | None = None,
                 freeze: bool = True, allow_overlap: bool = False, max_mask_ratio: float = 0.8):
        super().__init__()
        self.block_size = block_size
        self.mask_prob = mask_prob
        self.allow_overlap = allow_overlap
        self.max_mask_ratio = max_mask_ratio
        if mask_value is None:
            self.mask_embedding = nn.Parameter(torch.empty(feat_in))
            nn.init.normal_(self.mask_embedding, mean=0.0, std=0.1)
        else:
            self.mask_embedding = nn.Parameter(torch.ones(feat_in) * mask_value, requires_grad=False)
        if freeze:
            self.freeze()

    def forward(self, input_feats: torch.Tensor, input_lengths: torch.Tensor):
        B, _, T = input_feats.shape
        lengths = input_lengths.to(device=input_feats.device, dtype=torch.long).clamp(0, T)
        if self.allow_overlap:
            covered = self._overlapping_blocks(lengths, T)
        else:
            covered = self._spread_blocks(lengths, T)
        frames = covered[:, None, :]  # (B, 1, T) bool
        masks = frames.to(input_feats.dtype).expand(B, input_feats.shape[1], T).contiguous()
        emb = self.mask_embedding.to(input_feats.dtype)[None, :, None]
        masked_feats = torch.where(frames, emb, input_feats)
        return masked_feats, masks

    def _short(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.block_size >= lengths * self.max_mask_ratio

    def _overlapping_blocks(self, lengths: torch.Tensor, T: int) -> torch.Tensor:
        """n ~ Binomial(L - block, p) blocks at distinct uniform starts in [0, L - block), overlaps allowed."""
        short = self._short(lengths)
        count = (lengths - self.block_size).clamp(min=0)
        n = torch.binomial(count.float(), torch.full_like(count, self.mask_prob, dtype=torch.float)).long()
        n = torch.where(short, 1, n)
        starts, chosen = self._distinct(count, n, T, first_is_zero=short)
        size = torch.where(short, _SHORT_BLOCK, self.block_size)
        return self._cover(starts, chosen, size, lengths, T)

    def _spread_blocks(self, lengths: torch.Tensor, T: int) -> torch.Tensor:
        """NeMo's allow_overlap=False: n = ceil(L p / block) blocks on a grid of (possibly shrunk) block size,
        shifted by one random offset in [0, block), at distinct random grid cells out of L // size - 1."""
        short = self._short(lengths)
        n = torch.ceil(lengths * self.mask_prob / self.block_size).long()
        offset = torch.randint(0, self.block_size, lengths.shape, device=lengths.device)
        size = torch.full_like(lengths, self.block_size)
        size = torch.where((n + 1) * self.block_size > lengths, lengths // (n + 1), size).clamp(min=1)
        cells = (lengths // size - 1).clamp(min=0)
        n, offset = torch.where(short, 1, n), torch.where(short, 0, offset)
        size = torch.where(short, _SHORT_BLOCK, size)
        cell, chosen = self._distinct(cells, n, T, first_is_zero=short)
        return self._cover(cell * size[:, None] + offset[:, None], chosen, size, lengths, T)

    @staticmethod
    def _distinct(count: torch.Tensor, n: torch.Tensor, T: int, first_is_zero: torch.Tensor):
        """Per row, min(n, count) distinct values uniform in [0, count): returns (values (B, T), chosen (B, T))."""
        B = count.shape[0]
        # float64 keys: float32 has only 2^24 values, so ties (and a stable-sort bias) would be common at T ~ 6000.
        keys = torch.rand(B, max(T, 1), dtype=torch.float64, device=count.device)
        pos = torch.arange(keys.shape[1], device=count.device)
        keys = keys.masked_fill(pos[None, :] >= count[:, None], 2.0)  # never pick beyond count
        # Rows under the short rule take position 0 (and only it, since n = 1 there).
        keys[:, 0] = torch.where(first_is_zero, -1.0, keys[:, 0])
        values = keys.argsort(dim=1)
        chosen = (pos[None, :] < n[:, None]) & ((pos[None, :] < count[:, None]) | first_is_zero[:, None])
        return values, chosen

    @staticmethod
    def _cover(starts, chosen, size, lengths, T):
        """Union of [start, min(start + size, L)) over chosen starts, as a (B, T) bool frame mask."""
        ends = torch.minimum(starts + size[:, None], lengths[:, None])
        starts = torch.minimum(starts, lengths[:, None])
        step = chosen.long()
        diff = torch.zeros(starts.shape[0], T + 1, dtype=torch.long, device=starts.device)
        diff.scatter_add_(1, starts, step).scatter_add_(1, ends, -step)
        return diff[:, :T].cumsum(dim=1) > 0
