"""The noise set NEST mixes into utterances (``noise_manifest``).

Only metadata is kept in memory: one small entry per noise cut (a MUSAN-sized set is a few thousand). Audio
is read on demand, and only the span that is needed, starting at a random offset; a clip shorter than the
request is tiled. Semantics follow NeMo's ``sample_noise``/``load_noise_audio`` (nest_reference 4.2):
uniformly random entry, random offset inside long files, retry another entry when a file cannot be read
(at most ``max_tries``, then silence), retry the offset when the span is all zeros, and add faint white
noise (-90 to -46 dB) when it stays silent.

Differences from NeMo, on purpose: the dataset asks only for the samples the augmentation uses (``mix_len``,
half an utterance with the NEST config, and only for utterances in noise mode) where NeMo reads a full
utterance length for every utterance and then uses its first ``mix_len`` samples; the content is the same
kind of random excerpt, at a fraction of the decoding. "Silent" means all samples zero (NeMo tests
``sum(samples) > 0``, which also rejects spans whose samples merely sum to a negative value).

All draws come from the ``random.Random`` passed to :meth:`NoiseSet.sample`, so the noise a batch gets is a
function of the batch seed, not of the worker that happens to build it. Deliberately nothing is remembered
across calls (e.g. "this file is broken"), as that would make results depend on what a worker saw before.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional

import numpy as np
import torch
from lhotse import CutSet
from lhotse.cut import Cut

from nest_ssl.errors import UserError

log = logging.getLogger("nest_ssl.data")


class EmptyNoiseManifestError(UserError, ValueError):
    """A noise manifest was given but holds no usable entries."""


def cut_source(cut: Any) -> str:
    """The audio file (or other source) behind a cut, for messages."""
    try:
        if hasattr(cut, "recording") and cut.recording is not None:
            return ", ".join(str(s.source) for s in cut.recording.sources)
        if hasattr(cut, "tracks"):  # MixedCut
            return ", ".join(cut_source(t.cut) for t in cut.tracks if hasattr(t.cut, "recording"))
    except Exception:  # a message helper must never raise
        pass
    return "<unknown source>"


def file_sources(cut: Cut) -> List[str]:
    rec = getattr(cut, "recording", None)
    if rec is None:
        return []
    return [str(s.source) for s in rec.sources if s.type == "file"]


def describe_read_error(cut: Cut, err: BaseException) -> str:
    """Turns a lhotse loading error into one line naming the file and the fix."""
    where = cut_source(cut)
    for path in file_sources(cut):
        if not os.path.exists(path):
            return (f"audio file not found: {path}. Fix the path in the manifest (relative paths are resolved "
                    f"against the manifest's folder) or remove the entry")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return f"audio file is empty (0 bytes): {path}. Re-create it or remove the entry from the manifest"
        try:
            import soundfile

            info = soundfile.info(path)
        except Exception as sf_err:  # lhotse's backends and soundfile both fail: corrupt or unsupported
            detail = str(sf_err).splitlines()[0] if str(sf_err) else type(sf_err).__name__
            return (f"cannot decode {path} ({detail}). The file is corrupt or in an unsupported format: "
                    f"re-encode it (FLAC or WAV) or remove the entry")
        rec = cut.recording
        if info.samplerate != rec.sampling_rate:
            return (f"the manifest declares {rec.sampling_rate} Hz for {path} but the file is {info.samplerate} Hz. "
                    f"Regenerate the manifest entry from the file (it is resampled to the model rate when the "
                    f"manifest states its true rate)")
        if info.frames == 0:
            return f"audio file has no samples: {path}. Remove the entry from the manifest"
        if rec.num_samples > info.frames:
            return (f"the manifest entry reaches sample {rec.num_samples} of {path} but the file has only "
                    f"{info.frames}. Fix its duration/offset (or regenerate it from the file) or remove the entry")
    first = str(err).splitlines()[0] if str(err) else ""
    return f"cannot read audio of {where} ({type(err).__name__}: {first}). Fix or remove the entry"


def _open_cutset(spec: Any, what: str, sample_rate: int) -> CutSet:
    from nest_ssl.data.manifests import open_cutset  # the shared reader (NeMo JSON, lhotse jsonl(.gz), Shar)

    return open_cutset(spec, what=what, sample_rate=sample_rate)


def _split_spec(spec: Any) -> List[Any]:
    """NeMo accepts a comma-separated string or a list of manifests for ``noise_manifest``."""
    if spec is None:
        return []
    if isinstance(spec, str):
        return [s.strip() for s in spec.split(",") if s.strip()]
    if isinstance(spec, (list, tuple)) or type(spec).__name__ == "ListConfig":
        return [s for s in spec if s not in (None, "")]
    return [spec]


@dataclass(frozen=True)
class _Entry:
    cut: Cut  # supervisions and custom fields dropped: only recording, start, duration are used
    duration: float


class NoiseSet:
    """Random noise clips from a set of cuts, read span by span.

    Build it with :meth:`from_manifest` (``noise_manifest`` as in NeMo's config: a path, a comma-separated
    string, a list, or a CutSet) or :meth:`from_cuts`.
    """

    def __init__(
        self,
        entries: List[_Entry],
        *,
        sample_rate: int,
        source: str = "<cuts>",
        max_tries: int = 20,
        max_zero_tries: int = 10,
        min_white_noise_db: float = -90.0,
        max_white_noise_db: float = -46.0,
    ):
        if not entries:
            raise EmptyNoiseManifestError(
                f"noise manifest {source} has no usable entries (no cuts with a recording and a positive "
                "duration). Point noise_manifest at a manifest with noise audio, or set noise_manifest: null "
                "to train with speech-only mixing."
            )
        self.entries = entries
        self.sample_rate = int(sample_rate)
        self.source = source
        self.max_tries = max_tries
        self.max_zero_tries = max_zero_tries
        self.min_white_noise_db = min_white_noise_db
        self.max_white_noise_db = max_white_noise_db
        # Only for log throttling (one warning per bad file and process); never consulted for sampling.
        self._warned: set = set()
        self._silences = 0

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def from_cuts(cls, cuts: Iterable[Cut], *, sample_rate: int, source: str = "<cuts>", **kwargs) -> "NoiseSet":
        return cls(_entries(cuts, source), sample_rate=sample_rate, source=source, **kwargs)

    @classmethod
    def from_manifest(cls, spec: Any, *, sample_rate: int, what: str = "noise_manifest",
                      **kwargs) -> Optional["NoiseSet"]:
        """None for ``noise_manifest: null`` (or an empty string); raises EmptyNoiseManifestError naming the
        manifest when one of them holds nothing."""
        if isinstance(spec, CutSet):
            return cls.from_cuts(spec, sample_rate=sample_rate, source="<CutSet>", **kwargs)
        parts = _split_spec(spec)
        if not parts:
            return None
        entries: List[_Entry] = []
        for part in parts:
            part_entries = _entries(_open_cutset(part, what, sample_rate), str(part))
            if not part_entries:
                raise EmptyNoiseManifestError(
                    f"{what}: noise manifest {part} is empty (no entries with audio). Fill it with noise "
                    f"recordings, remove it from {what}, or set it to null for speech-only mixing."
                )
            entries.extend(part_entries)
        return cls(entries, sample_rate=sample_rate, source=",".join(str(p) for p in parts), **kwargs)

    # ------------------------------------------------------------------------------------------------------

    def _read(self, entry: _Entry, num_samples: int, rng: random.Random) -> np.ndarray:
        cut = entry.cut
        need = num_samples / self.sample_rate
        if cut.sampling_rate != self.sample_rate:
            cut = cut.resample(self.sample_rate)
        for _ in range(max(1, self.max_zero_tries)):
            if entry.duration > need:
                offset = rng.uniform(0.0, entry.duration - need)
                piece = cut.truncate(offset=offset, duration=need, preserve_id=True)
            else:
                piece = cut
            audio = piece.load_audio()
            audio = audio.mean(axis=0) if audio.ndim == 2 else audio
            if not np.isfinite(audio).all():
                raise ValueError("noise audio has NaN/Inf samples")
            if audio.size and np.any(audio != 0):
                return audio.astype(np.float32, copy=False)
            if entry.duration <= need:
                break  # the whole file is silent: another offset cannot help
        return audio.astype(np.float32, copy=False)

    def sample(self, num_samples: int, rng: random.Random) -> torch.Tensor:
        """A float32 noise clip of exactly ``num_samples`` samples at ``sample_rate`` (tiled when the noise is
        shorter). All zeros only when ``max_tries`` entries in a row cannot be read."""
        num_samples = int(num_samples)
        for _ in range(self.max_tries):
            entry = self.entries[rng.randrange(len(self.entries))]
            try:
                audio = self._read(entry, num_samples, rng)
            except Exception as err:  # any unreadable noise file: try another, never stop training
                key = cut_source(entry.cut)
                if key not in self._warned and len(self._warned) < 1000:
                    self._warned.add(key)
                    log.warning("noise: drawing another clip instead of %s: %s (listed in %s)",
                                key, describe_read_error(entry.cut, err), self.source)
                continue
            clip = torch.from_numpy(np.ascontiguousarray(audio))
            if clip.numel() == 0:
                continue
            if not torch.any(clip != 0):
                # NeMo's fallback for silent noise: faint white noise, so the noise energy is never zero.
                level_db = rng.uniform(self.min_white_noise_db, self.max_white_noise_db)
                gen = torch.Generator().manual_seed(rng.getrandbits(63))
                clip = torch.randn(clip.numel(), generator=gen) * (10.0 ** (level_db / 20.0))
            if clip.numel() < num_samples:
                reps = -(-num_samples // clip.numel())
                clip = clip.repeat(reps)
            return clip[:num_samples].float()
        self._silences += 1
        if self._silences in (1, 10, 100) or self._silences % 1000 == 0:
            log.warning("noise: %d noise clips in a row could not be read from %s; using silence (%d times in this "
                        "process so far). Check the noise manifest.", self.max_tries, self.source, self._silences)
        return torch.zeros(num_samples)


def _entries(cuts: Iterable[Cut], source: str) -> List[_Entry]:
    entries = []
    skipped = 0
    for cut in cuts:
        if not getattr(cut, "has_recording", False) or not cut.duration or cut.duration <= 0:
            skipped += 1
            continue
        slim = cut.drop_supervisions() if hasattr(cut, "drop_supervisions") else cut
        entries.append(_Entry(slim, float(cut.duration)))
    if skipped:
        log.warning("noise manifest %s: skipped %d entries without audio or with zero duration", source, skipped)
    return entries
