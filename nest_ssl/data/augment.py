"""NEST's batch-level augmentation: mix noise or other utterances of the batch into part of each utterance.

Parameters and their meaning follow NeMo 2.7.3's ``MultiSpeakerNoiseAugmentation`` (nest_reference 4.3). For
each utterance i of the batch, independently:

1. with probability ``1 - prob`` it is left alone;
2. a mix rate is drawn from U(min_mix_rate, max_mix_rate) (or min_mix_rate when the range is empty) and
   ``mix_len = max(1, int(len_i * rate))`` samples of it are covered;
3. the covered length is split into ``randint(min_num_segments, max_num_segments)`` segments;
4. with probability ``noise_ratio`` (always for a batch of one) the segments come from the utterance's noise
   clip, at an energy ratio r ~ U(min_r_noise, max_r_noise) dB; otherwise from
   ``min(randint(min_num_speakers, max_num_speakers), B - 1)`` other utterances of the batch, at
   r ~ U(min_r_speech, max_r_speech) dB;
5. segments are placed left to right without overlap;
6. the residual is scaled so that mean(speech^2) / mean(residual^2) = 10^(r/10), both averaged over the whole
   utterance length (so the local SNR inside the mixed part is lower than r).

Deliberate deviations from NeMo (nest_reference, top section, item 2):
- an utterance the augmenter skips stays clean (NeMo adds the dataset's raw, unscaled noise to it);
- ``noisy_audio_len`` is always ``audio_len`` (NeMo returns ``noise_len``, which can be shorter);
- all randomness comes from an explicit ``random.Random`` so a batch's augmentation is a function of its seed
  (NeMo draws from the process-global ``random``, which differs between DataLoader workers);
- a segment split that leaves a segment empty just drops it (NeMo then indexes past the end of its list);
- the split of ``mix_len`` into segments is drawn as a multinomial (the distribution of NeMo's "assign every
  sample to a random segment" without one RNG call per sample).

The decisions depend only on the utterance lengths, so :meth:`plan` draws them first; a dataset can then read
noise only for the utterances that need it (with the NEST config a quarter of them) and only the span needed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from nest_ssl.data.batch import AudioNoiseBatch

RngLike = Union[random.Random, torch.Generator, int, None]

# (i, num_samples) -> 1-D noise clip for utterance i (tiled here if shorter), or None when there is no noise.
NoiseSource = Callable[[int, int], Optional[torch.Tensor]]


def as_random(rng: RngLike, fallback: Optional[random.Random] = None) -> random.Random:
    """Accepts a ``random.Random``, a ``torch.Generator`` or an int seed and returns a ``random.Random``."""
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, torch.Generator):
        # One draw from the generator seeds the Python RNG: deterministic given the generator's state.
        return random.Random(int(torch.randint(0, 2**62, (1,), generator=rng).item()))
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return random.Random(int(rng))
    if rng is None and fallback is not None:
        return fallback
    raise TypeError(f"expected random.Random, torch.Generator or int seed, got {type(rng).__name__}")


def tile_to(x: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` samples of ``x`` repeated end to end (``x`` must not be empty)."""
    if x.numel() >= n:
        return x[:n]
    reps = -(-n // x.numel())
    return x.repeat(reps)[:n]


@dataclass
class Segment:
    dst_start: int  # where it goes in utterance i
    length: int
    src: int  # index of the batch utterance it is cut from, or -1 for the utterance's own noise clip
    src_start: int  # offset into the source (into the tiled noise clip for src == -1)


@dataclass
class MixPlan:
    """What the augmenter drew for one utterance (everything except the noise samples themselves)."""

    index: int
    mode: str  # "noise" or "speech"
    energy_ratio_db: float
    mix_len: int
    segments: List[Segment] = field(default_factory=list)


class MultiSpeakerNoiseAugmentation:
    """NeMo's ``MultiSpeakerNoiseAugmentation`` (same constructor keywords and defaults) with our fixes.

    ``seed`` (ours) seeds the generator used when ``__call__`` gets no ``rng``; the dataset always passes one.
    """

    def __init__(
        self,
        prob: float = 0.0,
        noise_ratio: float = 0.0,
        min_r_speech: float = -5.0,
        max_r_speech: float = 5.0,
        min_r_noise: float = -5.0,
        max_r_noise: float = 20.0,
        min_mix_rate: float = 0.0,
        max_mix_rate: float = 1.0,
        min_num_segments: int = 1,
        max_num_segments: int = 5,
        min_num_speakers: int = 1,
        max_num_speakers: int = 4,
        seed: Optional[int] = None,
    ):
        self.prob = float(prob)
        self.noise_ratio = float(noise_ratio)
        self.min_r_speech = float(min_r_speech)
        self.max_r_speech = float(max_r_speech)
        self.min_r_noise = float(min_r_noise)
        self.max_r_noise = float(max_r_noise)
        self.min_mix_rate = float(min_mix_rate)
        self.max_mix_rate = float(max_mix_rate)
        self.min_num_segments = int(min_num_segments)
        self.max_num_segments = int(max_num_segments)
        self.min_num_speakers = int(min_num_speakers)
        self.max_num_speakers = int(max_num_speakers)
        self._rng = random.Random(seed)

        name = type(self).__name__
        if not 0 <= self.prob <= 1:
            raise ValueError(f"{name}: prob must be in [0, 1], got {self.prob}")
        if not 0 <= self.noise_ratio <= 1:
            raise ValueError(f"{name}: noise_ratio must be in [0, 1], got {self.noise_ratio}")
        if self.min_r_speech > self.max_r_speech:
            raise ValueError(f"{name}: min_r_speech ({self.min_r_speech}) > max_r_speech ({self.max_r_speech})")
        if self.min_r_noise > self.max_r_noise:
            raise ValueError(f"{name}: min_r_noise ({self.min_r_noise}) > max_r_noise ({self.max_r_noise})")
        if not 0 <= self.min_mix_rate <= self.max_mix_rate <= 1:
            raise ValueError(
                f"{name}: need 0 <= min_mix_rate <= max_mix_rate <= 1, got {self.min_mix_rate}, {self.max_mix_rate}"
            )
        # NeMo does not check these; it would fail later inside random.randint with a less helpful message.
        if not 1 <= self.min_num_segments <= self.max_num_segments:
            raise ValueError(
                f"{name}: need 1 <= min_num_segments <= max_num_segments, "
                f"got {self.min_num_segments}, {self.max_num_segments}"
            )
        if not 1 <= self.min_num_speakers <= self.max_num_speakers:
            raise ValueError(
                f"{name}: need 1 <= min_num_speakers <= max_num_speakers, "
                f"got {self.min_num_speakers}, {self.max_num_speakers}"
            )

    def __repr__(self) -> str:
        keys = (
            "prob noise_ratio min_r_speech max_r_speech min_r_noise max_r_noise min_mix_rate max_mix_rate "
            "min_num_segments max_num_segments min_num_speakers max_num_speakers"
        ).split()
        return f"{type(self).__name__}(" + ", ".join(f"{k}={getattr(self, k)}" for k in keys) + ")"

    # ------------------------------------------------------------------------------------------------------
    # Drawing

    def _split(self, mix_len: int, num_segments: int, rng: random.Random) -> List[int]:
        if num_segments == 1:
            return [mix_len]
        counts = np.random.default_rng(rng.getrandbits(64)).multinomial(mix_len, [1.0 / num_segments] * num_segments)
        lens = [int(c) for c in counts if c > 0]
        # NeMo lists the segments in order of first appearance, i.e. in random order.
        rng.shuffle(lens)
        return lens

    def plan(self, audio_len: Sequence[int], rng: RngLike = None) -> List[Optional[MixPlan]]:
        """Draws the augmentation of a batch from its utterance lengths: one MixPlan per utterance, None = skip."""
        rng = as_random(rng, self._rng)
        lens = [int(x) for x in audio_len]
        batch_size = len(lens)
        plans: List[Optional[MixPlan]] = []
        for i, len_i in enumerate(lens):
            # NeMo: `random() > prob` skips, so prob=1 never skips and prob=0 skips (almost) always.
            if rng.random() > self.prob or len_i <= 0 or self.prob == 0.0:
                plans.append(None)
                continue
            if self.min_mix_rate < self.max_mix_rate:
                mix_rate = rng.uniform(self.min_mix_rate, self.max_mix_rate)
            else:
                mix_rate = self.min_mix_rate
            mix_len = max(1, int(len_i * mix_rate))
            num_segments = rng.randint(self.min_num_segments, self.max_num_segments)
            num_speakers = min(rng.randint(self.min_num_speakers, self.max_num_speakers), batch_size)
            seg_lens = self._split(mix_len, num_segments, rng)

            if rng.random() < self.noise_ratio or batch_size == 1:
                mode, ratio = "noise", rng.uniform(self.min_r_noise, self.max_r_noise)
            else:
                mode, ratio = "speech", rng.uniform(self.min_r_speech, self.max_r_speech)

            # Sources: consecutive slices of the (tiled) noise clip, or random crops of other utterances.
            sources: List[Tuple[int, int]] = []
            if mode == "noise":
                offset = 0
                for seg_len in seg_lens:
                    sources.append((-1, offset))
                    offset += seg_len
            else:
                others = [j for j in range(batch_size) if j != i]
                speakers = rng.sample(others, k=min(num_speakers, batch_size - 1))
                sid = 0
                for seg_len in seg_lens:
                    bid = speakers[sid]
                    # A source shorter than the segment is tiled from its start (src_start 0).
                    start = rng.randint(0, lens[bid] - seg_len - 1) if lens[bid] > seg_len else 0
                    sources.append((bid, start))
                    sid += 1
                    if sid >= len(speakers):
                        sid = rng.randint(0, len(speakers) - 1)

            # Left-to-right placement without overlap: each segment starts after the previous one and leaves
            # room for the rest.
            segments: List[Segment] = []
            lo, hi = 0, len_i - mix_len
            for seg_len, (src, src_start) in zip(seg_lens, sources):
                start = rng.randint(lo, hi - 1) if lo < hi else lo
                segments.append(Segment(start, seg_len, src, src_start))
                lo = start + seg_len
                hi += seg_len
            plans.append(MixPlan(i, mode, ratio, mix_len, segments))
        return plans

    # ------------------------------------------------------------------------------------------------------
    # Applying

    def apply(
        self,
        batch: AudioNoiseBatch,
        plans: Sequence[Optional[MixPlan]],
        noise_source: Optional[NoiseSource] = None,
        dense: bool = True,
        alloc: Optional[Callable[[int], torch.Tensor]] = None,
    ) -> AudioNoiseBatch:
        """Builds the residual from the plans. Noise-mode clips come from ``noise_source(i, mix_len)`` when
        given, else from ``batch.noise[i, :batch.noise_len[i]]`` (NeMo's calling convention).

        ``dense=False`` returns the compact batch (``AudioNoiseBatch.compact``: the residual's non-zero spans
        only, in a flat tensor from ``alloc(numel)``), which is what DataLoader workers ship.
        """
        audio = batch.audio
        audio_len = batch.audio_len
        lens = audio_len.tolist()
        info: List[Optional[dict]] = [None] * len(lens)
        spans: List[Tuple[int, int, int]] = []
        pieces: List[torch.Tensor] = []
        for plan in plans:
            if plan is None or not plan.segments:
                continue
            i, len_i = plan.index, lens[plan.index]
            first = plan.segments[0].dst_start
            last = plan.segments[-1].dst_start + plan.segments[-1].length
            # The residual of row i is zero outside [first, last): build only that span.
            buf = audio.new_zeros(last - first)
            noise_clip = self._noise_clip(batch, i, plan.mix_len, noise_source) if plan.mode == "noise" else None
            for seg in plan.segments:
                if seg.src < 0:
                    if noise_clip is None:
                        continue
                    piece = noise_clip[seg.src_start : seg.src_start + seg.length]
                else:
                    src = audio[seg.src, : lens[seg.src]]
                    if lens[seg.src] >= seg.src_start + seg.length:
                        piece = src[seg.src_start : seg.src_start + seg.length]
                    else:
                        piece = tile_to(src, seg.length)
                buf[seg.dst_start - first : seg.dst_start - first + seg.length] = piece

            # Energies in float64: the scale must reproduce the drawn ratio, also for long, quiet inputs.
            speech = audio[i, :len_i].double()
            p_speech = float(torch.dot(speech, speech)) / len_i
            placed = buf.double()
            p_noise = float(torch.dot(placed, placed)) / len_i
            scale = math.sqrt(p_speech / (10 ** (plan.energy_ratio_db / 10) * p_noise)) if p_noise > 0 else 0.0
            info[i] = {
                "mode": plan.mode,
                "energy_ratio_db": plan.energy_ratio_db,
                "mix_len": plan.mix_len,
                "segments": [(s.dst_start, s.length, s.src) for s in plan.segments],
                "scale": scale,
            }
            if scale == 0.0:
                continue  # nothing to add: the utterance stays clean
            buf.mul_(scale)
            spans.append((i, first, last))
            pieces.append(buf)

        total = sum(p.numel() for p in pieces)
        values = alloc(total) if alloc is not None else audio.new_empty(total)
        if pieces:
            torch.cat(pieces, out=values)
        out = AudioNoiseBatch.compact(
            sample_id=batch.sample_id,
            audio=audio,
            audio_len=audio_len,
            noise_spans=spans,
            noise_values=values,
            rejected=batch.rejected,
            seed=batch.seed,
            aug_info=info,
        )
        return out.materialize() if dense else out

    @staticmethod
    def _noise_clip(
        batch: AudioNoiseBatch, i: int, n: int, noise_source: Optional[NoiseSource]
    ) -> Optional[torch.Tensor]:
        if noise_source is not None:
            clip = noise_source(i, n)
        elif batch.noise is not None:
            nl = int(batch.noise_len[i]) if batch.noise_len is not None else batch.noise.shape[1]
            clip = batch.noise[i, :nl]
        else:
            clip = None
        if clip is None or clip.numel() == 0:
            return None
        return tile_to(clip.to(batch.audio.dtype), n)

    def __call__(
        self,
        batch: AudioNoiseBatch,
        rng: RngLike = None,
        noise_source: Optional[NoiseSource] = None,
        dense: bool = True,
        alloc: Optional[Callable[[int], torch.Tensor]] = None,
    ) -> AudioNoiseBatch:
        """Augments ``batch`` (needs ``audio``, ``audio_len``; ``noise``/``noise_len`` or ``noise_source`` for
        noise mode) and returns a new batch; the input tensors are not modified."""
        plans = self.plan(batch.audio_len.tolist(), rng)
        return self.apply(batch, plans, noise_source, dense=dense, alloc=alloc)
