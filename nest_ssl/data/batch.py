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
    # Compact form of ``noise`` (see ``compact()``): (row, start, end) spans outside which it is zero, and, while
    # ``noise`` itself is not built, the spans' samples end to end in ``noise_values``.
    noise_spans: Optional[List[Tuple[int, int, int]]] = field(default=None, repr=False)
    noise_values: Optional[torch.Tensor] = field(default=None, repr=False)
    # Iterable (Shar) input: where this batch stands in its stream, {"worker": stream worker, "batches": batches the
    # stream has given so far, this one included, "parts": the shards its cuts came from}; the trainer keeps it for
    # the batches it trained on, so a checkpoint can resume every stream exactly (nest_ssl.data.ResumableIterable).
    stream: Optional[dict] = field(default=None, repr=False)

    def __len__(self) -> int:
        if self.audio is not None:
            return int(self.audio.shape[0])
        return len(self.sample_id or [])

    @property
    def num_rejected(self) -> int:
        return len(self.rejected)

    @classmethod
    def compact(cls, *, audio: torch.Tensor, audio_len: torch.Tensor, noise_spans: List[Tuple[int, int, int]],
                noise_values: torch.Tensor, **other) -> "AudioNoiseBatch":
        """A batch whose ``noise`` is given by spans and ``noisy_audio`` is ``audio + noise``, neither built yet.

        DataLoader workers return this form: pickling it (worker -> main process) ships the audio and only the
        non-zero spans of the noise, and unpickling builds ``noise`` and ``noisy_audio``. Moving two more dense
        (B, T) tensors through shared memory cost a worker more CPU than decoding the audio (bench/dataloader.py).
        Call ``materialize()`` to build them in place.
        """
        return cls(audio=audio, audio_len=audio_len, noise_len=audio_len.clone(), noisy_audio_len=audio_len.clone(),
                   noise_spans=noise_spans, noise_values=noise_values, **other)

    def materialize(self) -> "AudioNoiseBatch":
        """Builds ``noise`` and ``noisy_audio`` of a compact batch (no-op otherwise); returns self."""
        if self.noise is None and self.noise_values is not None and self.audio is not None:
            # noisy_audio = audio + noise, added only where noise is not zero (a copy is cheaper than a sum).
            noise = torch.zeros_like(self.audio)
            noisy = self.audio.clone()
            offset = 0
            for r, s, e in self.noise_spans:
                values = self.noise_values[offset : offset + e - s]
                noise[r, s:e] = values
                noisy[r, s:e] += values
                offset += e - s
            self.noise = noise
            self.noisy_audio = noisy
            self.noise_values = None
        return self

    def __reduce__(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        spans = self.noise_spans
        if spans is None or self.audio is None or (self.noise is None and self.noise_values is None):
            return (_rebuild, (fields,))
        if self.noise_values is None:  # dense with known spans: ship the spans only
            pieces = [self.noise[r, s:e] for r, s, e in spans]
            fields["noise_values"] = torch.cat(pieces) if pieces else self.noise.new_zeros(0)
        fields["noise"] = fields["noisy_audio"] = None
        return (_rebuild_materialized, (fields,))

    def _map_tensors(self, fn) -> "AudioNoiseBatch":
        self.materialize()
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


def _rebuild(fields: dict) -> AudioNoiseBatch:
    return AudioNoiseBatch(**fields)


def _rebuild_materialized(fields: dict) -> AudioNoiseBatch:
    return AudioNoiseBatch(**fields).materialize()
