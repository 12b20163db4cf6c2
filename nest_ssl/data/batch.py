"""The training batch of the NEST data pipeline.

Field names and meanings are NeMo's (``ssl_dataset.AudioNoiseBatch``) so that the model, the trainer and a
NeMo-style batch augmentor can all read and build it. The extra fields (``rejected``, ``seed``,
``aug_info``) carry bookkeeping that NeMo does not have: which cuts were dropped from this batch and why,
and the seed the batch was drawn with (the model can use it to make validation masking repeatable).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import torch

_TENSOR_FIELDS = ("audio", "audio_len", "noise", "noise_len", "noisy_audio", "noisy_audio_len")


@dataclass
class AudioNoiseBatch:
    """One batch: clean audio, the additive residual ``noise`` and ``noisy_audio = audio + noise``.

    Shapes: ``audio``, ``noise``, ``noisy_audio`` are ``(B, T)`` float32, right-padded with zeros;
    the ``*_len`` fields are ``(B,)`` int64. Every field defaults to ``None`` so code written against
    NeMo's dataclass (which builds it field by field) works unchanged.
    """

    sample_id: Optional[List[str]] = None
    audio: Optional[torch.Tensor] = None
    audio_len: Optional[torch.Tensor] = None
    noise: Optional[torch.Tensor] = None
    noise_len: Optional[torch.Tensor] = None
    noisy_audio: Optional[torch.Tensor] = None
    noisy_audio_len: Optional[torch.Tensor] = None
    # (cut id, reason) for each cut dropped from this batch (unreadable, NaN/Inf, empty, ...).
    rejected: List[Tuple[str, str]] = field(default_factory=list)
    # The seed this batch's randomness was derived from (None when built outside AudioNoiseDataset).
    seed: Optional[int] = None
    # Per utterance: None when the augmentor left it clean, else a dict of what was drawn
    # (mode, energy_ratio_db, mix_len, segments). Used by tests and for debugging augmentation.
    aug_info: Optional[List[Optional[dict]]] = None

    def __len__(self) -> int:
        if self.audio is not None:
            return int(self.audio.shape[0])
        return len(self.sample_id or [])

    @property
    def num_rejected(self) -> int:
        return len(self.rejected)

    def _map_tensors(self, fn) -> "AudioNoiseBatch":
        changes: dict[str, Any] = {}
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                changes[name] = fn(value)
        return dataclasses.replace(self, **changes)

    def to(self, device, non_blocking: bool = False) -> "AudioNoiseBatch":
        """A copy with every tensor moved to ``device`` (the bookkeeping fields are shared)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "AudioNoiseBatch":
        """Called by ``DataLoader(pin_memory=True)``: without it the custom batch would silently stay
        in pageable memory (NeMo's dataclass has this gap, PR #15920)."""
        return self._map_tensors(lambda t: t.pin_memory())
