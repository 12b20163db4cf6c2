"""NEST's noise and speaker mixing on the training device, on the collated batch (``train_ds.augment_on: device``).

With ``augment_on: worker`` (the default) DataLoader workers decode, cut, collate and mix (nest_ssl.data.dataset).
With ``augment_on: device`` they only decode, cut and collate; the training process then calls

    batch = batch_to_device(loader, batch, device)

which moves the clean batch to ``device`` and mixes there (:class:`DeviceAugment`). The batch contract is unchanged:
``noise``, ``noisy_audio`` (= audio + noise) and their lengths are set, ``aug_info`` lists what was drawn.

Same statistics, by construction: the host draws the plan with the augmentor's own :meth:`plan` from the same
generators the worker path uses (``hash_seed(batch.seed, "augment")`` and ``hash_seed(batch.seed, "noise")``), and
draws the noise clips in the same order. For a given batch seed both paths make the same decisions (segment counts,
placements, energy ratios, which utterances are skipped) and the same noise draws; the mixed tensors agree to float32
rounding (tests/test_data_device_augment.py). Deterministic for a seed like the worker path.

What stays on the host: the plan (a few random draws per utterance) and slicing the noise clips, which costs nothing
with a noise bank (nest_ssl.data.noise_bank: a slice of a memory map) and a decode per noise-mode utterance with a
plain noise manifest. What runs on the device: the segment copies (one slice copy per segment), the energies and
scales of all rows at once, ``noise`` and ``noisy_audio``. Nothing reads a result back from the device, and the
small host tensors go through pinned memory (a copy from pageable memory would wait for the stream). The batch's own
audio is pinned by the DataLoader with ``pin_memory: true``.

``aug_info`` of a device-mixed batch has the worker path's keys except ``scale`` (reading it back would wait for the
device).
"""

from __future__ import annotations

import random
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from nest_ssl.data.augment import MixPlan, MultiSpeakerNoiseAugmentation, tile_to
from nest_ssl.data.batch import AudioNoiseBatch
from nest_ssl.seeding import hash_seed

DeviceLike = Union[str, torch.device]


class DeviceAugment:
    """``(clean batch, device) -> mixed batch on device``; the augmentor's parameters, the noise set or bank's clips.

    :param augmentor: the MultiSpeakerNoiseAugmentation of the section.
    :param noise: a NoiseSet or NoiseBank (``sample(n, rng)``), or None for speech-only mixing.
    """

    def __init__(self, augmentor: MultiSpeakerNoiseAugmentation, noise: Any = None):
        if not isinstance(augmentor, MultiSpeakerNoiseAugmentation):
            raise TypeError(f"DeviceAugment needs a MultiSpeakerNoiseAugmentation, got {type(augmentor).__name__}")
        self.augmentor = augmentor
        self.noise = noise

    def host_part(self, batch: AudioNoiseBatch) -> Tuple[List[Optional[MixPlan]], List[torch.Tensor]]:
        """The plans and, for each plan in noise mode (in order), its noise clip of ``mix_len`` samples (CPU)."""
        if batch.seed is None:
            raise ValueError("DeviceAugment needs batch.seed (set by AudioNoiseDataset) to draw the augmentation")
        lens = batch.audio_len.tolist()
        plans = self.augmentor.plan(lens, random.Random(hash_seed(batch.seed, "augment")))
        noise_rng = random.Random(hash_seed(batch.seed, "noise"))
        clips: List[torch.Tensor] = []
        for plan in plans:
            if plan is None or not plan.segments or plan.mode != "noise":
                continue
            # The worker path asks the noise source for mix_len samples per noise-mode plan, in plan order.
            clip = None if self.noise is None else self.noise.sample(plan.mix_len, noise_rng)
            clips.append(clip if clip is not None else torch.zeros(0))
        return plans, clips

    def __call__(self, batch: AudioNoiseBatch, device: DeviceLike, non_blocking: bool = True) -> AudioNoiseBatch:
        if len(batch) == 0:
            return batch.to(device, non_blocking=non_blocking)
        plans, clips = self.host_part(batch)
        return self.apply(batch, plans, clips, device, non_blocking=non_blocking)

    def apply(self, batch: AudioNoiseBatch, plans: Sequence[Optional[MixPlan]], clips: Sequence[torch.Tensor],
              device: DeviceLike, non_blocking: bool = True) -> AudioNoiseBatch:
        device = torch.device(device)
        lens = batch.audio_len.tolist()
        audio = batch.audio.to(device, non_blocking=non_blocking)
        audio_len = batch.audio_len.to(device, non_blocking=non_blocking)
        # All noise clips in one host->device copy.
        flat = _to_device(torch.cat([c.to(audio.dtype) for c in clips]) if clips else torch.zeros(0), device)

        residual = torch.zeros_like(audio)
        ratio_db = [0.0] * len(lens)
        mixed = [False] * len(lens)
        info: List[Optional[dict]] = [None] * len(lens)
        at, clip_no = 0, 0
        for plan in plans:
            if plan is None or not plan.segments:
                continue
            i = plan.index
            clip = None
            if plan.mode == "noise":
                n = clips[clip_no].numel()
                clip = tile_to(flat[at : at + n], plan.mix_len) if n else None
                at, clip_no = at + n, clip_no + 1
            for seg in plan.segments:
                if seg.src < 0:
                    if clip is None:
                        continue
                    piece = clip[seg.src_start : seg.src_start + seg.length]
                elif lens[seg.src] >= seg.src_start + seg.length:
                    piece = audio[seg.src, seg.src_start : seg.src_start + seg.length]
                else:
                    piece = tile_to(audio[seg.src, : lens[seg.src]], seg.length)
                residual[i, seg.dst_start : seg.dst_start + seg.length] = piece
            ratio_db[i], mixed[i] = plan.energy_ratio_db, True
            info[i] = {"mode": plan.mode, "energy_ratio_db": plan.energy_ratio_db, "mix_len": plan.mix_len,
                       "segments": [(s.dst_start, s.length, s.src) for s in plan.segments]}

        # Energies over each utterance's own length, in float64 (as the worker path): padding is zero in both.
        n = audio_len.to(torch.float64).clamp_min(1)
        p_speech = audio.double().square().sum(1) / n
        p_noise = residual.double().square().sum(1) / n
        target = _to_device(torch.tensor([10 ** (r / 10) for r in ratio_db], dtype=torch.float64), device)
        use = _to_device(torch.tensor(mixed), device) & (p_noise > 0)
        scale = torch.where(use, (p_speech / (target * torch.where(use, p_noise, 1.0))).sqrt(), 0.0)
        noise = residual.mul_(scale.to(audio.dtype)[:, None])
        return AudioNoiseBatch(
            sample_id=batch.sample_id, audio=audio, audio_len=audio_len, noise=noise, noise_len=audio_len.clone(),
            noisy_audio=audio + noise, noisy_audio_len=audio_len.clone(), rejected=batch.rejected, seed=batch.seed,
            aug_info=info, stream=batch.stream,
        )


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (on the CPU) on ``device``; through pinned memory to a GPU, so that the copy is queued behind the work
    already on the stream instead of waiting for it (a copy from pageable memory synchronises the stream first)."""
    if device.type == "cuda" and t.numel():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def check_augment_on(augment_on: str, augmentor: Any, section: str) -> None:
    """``augment_on: device`` needs NEST's augmentor (the transform mixes with its plan); ConfigError otherwise."""
    if augment_on == "device" and not isinstance(augmentor, MultiSpeakerNoiseAugmentation):
        from nest_ssl.config import ConfigError

        what = "no batch_augmentor" if augmentor is None else f"batch_augmentor {type(augmentor).__name__}"
        raise ConfigError(f"{section}.augment_on=device mixes with NEST's MultiSpeakerNoiseAugmentation, but the "
                          f"section has {what}; set {section}.batch_augmentor (NEST's) or {section}.augment_on=worker")


def batch_to_device(loader: Any, batch: AudioNoiseBatch, device: DeviceLike,
                    non_blocking: bool = True) -> AudioNoiseBatch:
    """The trainer's one call per batch: ``batch`` on ``device``, mixed there when the loader's section says
    ``augment_on: device`` (the loader then carries a ``batch_transform``), else just moved."""
    transform = getattr(loader, "batch_transform", None)
    if transform is not None:
        return transform(batch, device, non_blocking=non_blocking)
    return batch.to(device, non_blocking=non_blocking)
