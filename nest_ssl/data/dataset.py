"""Map-style dataset over the CutSet batches a lhotse sampler yields (lhotse's own dataset pattern).

``AudioNoiseDataset[cuts] -> AudioNoiseBatch``: reads every cut through lhotse (resampled to the model's rate,
multi-channel downmixed by averaging), drops the cuts whose audio cannot be used (logged with the cut id, the
file and what to do; listed in ``batch.rejected``), optionally reverberates, collates, and applies the NEST
batch augmentation with noise drawn from the noise set.

Determinism: every random choice in a batch comes from generators seeded by
``hash(seed, epoch, the batch's cut ids)``. A batch therefore gets the same augmentation whichever DataLoader
worker builds it, and with ``training=False`` the epoch is ignored, so validation batches are identical at
every evaluation. ``batch.seed`` exposes the batch seed so the model can seed its validation masking too.
"""

from __future__ import annotations

import io
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import soundfile
import torch
from lhotse import CutSet, MonoCut, Recording
from lhotse.cut import Cut, MultiCut
from lhotse.utils import compute_num_samples, fastcopy

from nest_ssl.data.augment import MultiSpeakerNoiseAugmentation
from nest_ssl.data.batch import AudioNoiseBatch
from nest_ssl.data.noise import cut_source, describe_read_error, file_sources
from nest_ssl.data.noise_bank import open_noise
from nest_ssl.seeding import hash_seed

log = logging.getLogger("nest_ssl.data")


class CutRejected(Exception):
    """A cut whose audio cannot be used; the message names the file and what to do."""


# --------------------------------------------------------------------------------------------------------------
# Reading one cut


_warned_rates: set = set()  # per process, only to throttle the warning below (bounded)


def _at_true_rate(cut: Cut) -> Cut:
    """``cut``, re-described from its file's header when the manifest declared the wrong sampling rate.

    NeMo manifests carry no sampling rate, so a NeMo line with a ``duration`` is taken at the default rate without
    reading the header. lhotse then pads or trims a length mismatch below its tolerance (0.5 s) silently, which
    would feed e.g. a 1 s 22.05 kHz file as 16 kHz audio; NeMo itself resamples such files. So the header is
    checked for every file-backed cut (about 2 % of the decoding time) and a mismatch is read at the true rate
    and resampled. When the header cannot be read, the cut is returned unchanged and the read reports why.
    """
    if not isinstance(cut, (MonoCut, MultiCut)) or cut.recording is None or cut.recording.transforms:
        return cut  # transformed recordings declare the post-transform rate; nothing to compare
    paths = file_sources(cut)
    if len(paths) != 1 or len(cut.recording.sources) != 1:
        return cut
    try:
        info = soundfile.info(paths[0])
    except Exception:
        return cut
    if info.samplerate == cut.recording.sampling_rate:
        return cut
    rec = Recording.from_file(paths[0], recording_id=cut.recording.id)
    if cut.start >= rec.duration:
        return cut  # cannot be the intended segment: let the read fail and describe the mismatch
    whole = rec.to_cut()  # a MultiCut for multi-channel files, so they get downmixed
    fixed = whole.truncate(offset=cut.start, duration=min(cut.duration, rec.duration - cut.start), preserve_id=True)
    if len(_warned_rates) < 1000 and paths[0] not in _warned_rates:
        _warned_rates.add(paths[0])
        log.warning(
            "cut %s: the manifest declares %d Hz for %s but the file is %d Hz; reading it at its true rate and "
            "resampling. Add the file's sampling_rate to the manifest line (or convert the manifest with "
            "`nest-ssl manifest from-nemo`).",
            cut.id, cut.recording.sampling_rate, paths[0], info.samplerate,
        )
    return fastcopy(fixed, id=cut.id)


def _read_direct(cut: Cut, sample_rate: int, out: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """The samples of a plain mono cut read with soundfile alone, or None to take lhotse's reader.

    Plain: a MonoCut of a one-source, one-channel recording without transforms, a file or in-memory (Shar) source
    whose header has the declared rate, equal to ``sample_rate``, and holds the cut's whole span. That is what Shar
    and prepared manifests hold, and for it lhotse's reader computes exactly this (seek to the start sample, read
    ``num_samples`` float32 frames) with about as much Python around it as the decoding of a WAV costs. Anything
    else, and any failure, returns None: lhotse reads it and describes what is wrong. ``out``: decode into it (a
    float32 array of at least ``num_samples``); the result is then a view of it.
    """
    if type(cut) is not MonoCut:
        return None
    rec = cut.recording
    if rec is None or rec.transforms or len(rec.sources) != 1 or rec.sampling_rate != sample_rate:
        return None
    src = rec.sources[0]
    if src.type == "memory":
        handle: Any = io.BytesIO(src.source)
    elif src.type == "file":
        handle = src.source
    else:
        return None
    n = cut.num_samples
    if out is not None and out.shape[0] < n:
        return None
    try:
        with soundfile.SoundFile(handle) as snd:
            if snd.samplerate != sample_rate or snd.channels != 1:
                return None
            start = compute_num_samples(cut.start, sample_rate)
            if start:
                snd.seek(start)
            if out is None:
                audio = snd.read(frames=n, dtype="float32")
            else:
                audio = snd.read(dtype="float32", out=out[:n])
    except Exception:
        return None
    return audio if audio.shape[0] == n and n > 0 else None


def load_cut_audio(cut: Cut, sample_rate: int) -> np.ndarray:
    """Mono float32 samples of ``cut`` at ``sample_rate``; raises CutRejected with a clear reason."""
    audio = _read_direct(cut, sample_rate)
    if audio is not None:
        return _checked(audio, cut)
    try:
        cut = _at_true_rate(cut)
    except Exception:  # a header that looked fine but cannot be turned into a recording: let the read decide
        pass
    declared = cut  # for messages: the resampled cut declares the target rate, not the file's
    if cut.sampling_rate != sample_rate:
        try:
            cut = cut.resample(sample_rate)
        except Exception as err:
            raise CutRejected(
                f"cannot resample {cut_source(cut)} from {cut.sampling_rate} Hz to {sample_rate} Hz "
                f"({type(err).__name__}: {err}). Convert the file to {sample_rate} Hz or remove the entry"
            ) from None
    try:
        audio = cut.load_audio()
    except Exception as err:  # every reading failure drops the cut; training never stops for one file
        raise CutRejected(describe_read_error(declared, err)) from None
    if audio.ndim == 2:
        # Downmix by averaging channels (what lhotse's collate_audio does with mono_downmix=True).
        audio = audio[0] if audio.shape[0] == 1 else audio.mean(axis=0)
    if audio.size == 0:
        raise CutRejected(f"decoded 0 samples from {cut_source(cut)}. Remove the entry or fix its duration")
    return _checked(np.ascontiguousarray(audio, dtype=np.float32), cut)


def _checked(audio: np.ndarray, cut: Cut) -> np.ndarray:
    """``audio`` unless it holds NaN/Inf (then CutRejected). One dot product screens it: it is finite for finite
    audio unless the samples are huge (> 1e17), and only then is every sample tested."""
    if np.isfinite(np.dot(audio, audio)):
        return audio
    finite = np.isfinite(audio)
    if not finite.all():
        bad = int(audio.size - finite.sum())
        raise CutRejected(
            f"audio in {cut_source(cut)} has {bad} NaN/Inf samples of {audio.size}. Fix the file or remove the entry"
        )
    return audio


# --------------------------------------------------------------------------------------------------------------
# Reverberation


@dataclass
class ReverbConfig:
    """``reverb`` key of train_ds/validation_ds. Off by default. ``rir_manifest: null`` uses lhotse's fast
    random RIR generator; otherwise RIRs are drawn from that manifest (any form open_cutset reads)."""

    enabled: bool = False
    prob: float = 0.5
    rir_manifest: Any = None
    early_only: bool = False
    normalize_output: bool = True

    @classmethod
    def from_config(cls, node: Any) -> "ReverbConfig":
        if node is None:
            return cls()
        if isinstance(node, ReverbConfig):
            return node
        d = dict(node)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(
                f"unknown reverb key(s) {sorted(unknown)}; supported: {sorted(cls.__dataclass_fields__)}"
            )
        cfg = cls(**d)
        if not 0.0 <= cfg.prob <= 1.0:
            raise ValueError(f"reverb.prob must be in [0, 1], got {cfg.prob}")
        return cfg


class Reverberator:
    """Applies lhotse's ``ReverbWithImpulseResponse`` transform to loaded samples with probability ``prob``.

    We apply the transform to the samples ourselves rather than use the CutSet transform so that the room of a
    generated RIR is seeded from the batch RNG (lhotse would seed it from a fresh uuid4 per call). The clean
    audio is reverberated: reverberation is a property of the recording, and both the targets and the noisy
    input see it.
    """

    def __init__(self, cfg: ReverbConfig, sample_rate: int, what: str = "reverb.rir_manifest"):
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.rirs: List[Cut] = []
        if cfg.rir_manifest not in (None, ""):
            from nest_ssl.data.manifests import open_cutset

            for c in open_cutset(cfg.rir_manifest, what=what, sample_rate=sample_rate):
                if c.sampling_rate != sample_rate:
                    c = c.resample(sample_rate)
                self.rirs.append(c.drop_supervisions() if hasattr(c, "drop_supervisions") else c)
            if not self.rirs:
                raise ValueError(
                    f"{what} {cfg.rir_manifest} is empty. Point it at RIR recordings, or set it to null to use "
                    "generated impulse responses"
                )

    def __call__(self, audio: np.ndarray, rng: random.Random) -> np.ndarray:
        if rng.random() >= self.cfg.prob:
            return audio
        from lhotse.augmentation.rir import ReverbWithImpulseResponse

        if self.rirs:
            transform = ReverbWithImpulseResponse(
                rir=self.rirs[rng.randrange(len(self.rirs))],
                normalize_output=self.cfg.normalize_output,
                early_only=self.cfg.early_only,
            )
        else:
            seed = rng.getrandbits(31)
            transform = ReverbWithImpulseResponse(
                rir_generator={"sr": self.sample_rate, "room_seed": seed, "source_seed": seed + 1},
                normalize_output=self.cfg.normalize_output,
                early_only=self.cfg.early_only,
            )
            # lhotse's generator also draws from torch's global RNG (multinomial over image distances):
            # seed it locally so the room depends on the batch seed only, without touching the caller's RNG.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                out = transform(audio[None, :], self.sample_rate)
            return np.ascontiguousarray(out[0], dtype=np.float32)
        out = transform(audio[None, :], self.sample_rate)
        return np.ascontiguousarray(out[0], dtype=np.float32)


# --------------------------------------------------------------------------------------------------------------
# The dataset


class AudioNoiseDataset(torch.utils.data.Dataset):
    """``dataset[cuts] -> AudioNoiseBatch`` for NEST pretraining.

    :param sample_rate: the model's rate; every cut is resampled to it.
    :param noise: a NoiseSet or NoiseBank, a ``noise_manifest`` spec (path, comma-separated paths, list, CutSet, a
        noise bank folder) or None.
    :param batch_augmentor: a MultiSpeakerNoiseAugmentation (or any callable ``batch -> batch``) or None.
        Without one, ``noisy_audio = audio + raw noise`` as in NeMo.
    :param reverb: a ReverbConfig or its dict (``enabled``, ``prob``, ``rir_manifest``, ...); off by default.
    :param seed: base seed of all per-batch randomness.
    :param training: False ignores the epoch, so every evaluation sees the same batches.
    :param section: config section named in error messages (default train_ds / validation_ds).
    :param augment_on: ``worker`` mixes here; ``device`` returns the clean collated batch (audio, lengths, seed) and
        leaves the mixing to nest_ssl.data.device_augment in the training process (``noise`` is then not read here).
    """

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        noise: Any = None,
        batch_augmentor: Optional[Callable[..., AudioNoiseBatch]] = None,
        reverb: Any = None,
        seed: int = 0,
        training: bool = True,
        section: Optional[str] = None,
        augment_on: str = "worker",
    ):
        super().__init__()
        if augment_on not in ("worker", "device"):
            raise ValueError(f"augment_on must be 'worker' or 'device', got {augment_on!r}")
        self.augment_on = augment_on
        self.sample_rate = int(sample_rate)
        # Config section for messages ("train_ds" / "validation_ds").
        section = section or ("train_ds" if training else "validation_ds")
        # A noise manifest, or a noise bank folder (nest_ssl.data.noise_bank: one memory-mapped PCM file).
        self.noise = open_noise(noise, sample_rate=self.sample_rate, what=f"{section}.noise_manifest")
        self.batch_augmentor = batch_augmentor
        self.reverb_cfg = ReverbConfig.from_config(reverb)
        self.reverb = (
            Reverberator(self.reverb_cfg, self.sample_rate, what=f"{section}.reverb.rir_manifest")
            if self.reverb_cfg.enabled
            else None
        )
        self.seed = int(seed)
        self.training = bool(training)
        self.epoch = 0
        self.num_rejected = 0  # in this process (each DataLoader worker counts its own); batches carry theirs
        if (
            self.noise is None
            and isinstance(batch_augmentor, MultiSpeakerNoiseAugmentation)
            and batch_augmentor.prob > 0
            and batch_augmentor.noise_ratio > 0
        ):
            log.warning(
                "no noise_manifest: speech-only mixing. Utterances that draw noise mode (noise_ratio=%s of the "
                "augmented ones, and all in batches of one) stay clean, as in NeMo. Set noise_manifest to "
                "mix noise too.",
                batch_augmentor.noise_ratio,
            )

    def set_epoch(self, epoch: int) -> None:
        """Changes the training augmentation between epochs (build_dataloader's loader calls it from the
        sampler's epoch at every ``iter()``)."""
        self.epoch = int(epoch)

    def batch_seed(self, cut_ids: Sequence[str]) -> int:
        epoch = self.epoch if self.training else "val"
        return hash_seed("nest-batch", self.seed, epoch, *cut_ids)

    def _read_batch(self, cuts: List[Cut], alloc: Callable, reverb_rng: random.Random
                    ) -> Tuple[List[str], torch.Tensor, List[int], List[Tuple[str, str]]]:
        """(ids, audio (B, T) zero-padded, lengths, rejected) of the cuts that can be read.

        The rows are allocated once from the cuts' declared lengths and plain cuts are decoded straight into their
        row (``_read_direct``): no per-cut array, no second copy. Other cuts (and every cut when reverberating) are
        read by ``load_cut_audio`` and copied in. A rejected cut leaves no row.
        """
        sr = self.sample_rate
        expected = []
        for cut in cuts:
            try:
                expected.append(max(1, compute_num_samples(cut.duration, sr)))
            except Exception:  # a cut without a duration: its read says what is wrong
                expected.append(1)
        buf = alloc((len(cuts), max(expected, default=1)))
        ids: List[str] = []
        lens: List[int] = []
        rejected: List[Tuple[str, str]] = []
        for cut, want in zip(cuts, expected):
            r = len(ids)
            n = None
            if self.reverb is None:
                direct = _read_direct(cut, sr, out=buf[r].numpy()[:want])
                n = None if direct is None else direct.shape[0]
            try:
                if n is not None:
                    _checked(buf[r, :n].numpy(), cut)
                else:
                    audio = load_cut_audio(cut, sr)
                    if self.reverb is not None:
                        audio = self.reverb(audio, reverb_rng)
                    n = audio.shape[0]
                    if n > buf.shape[1]:  # longer than declared (a resampled or re-described cut): widen
                        wider = alloc((len(cuts), n))
                        wider[:r, : buf.shape[1]] = buf[:r]
                        buf = wider
                    buf[r, :n] = torch.from_numpy(audio)
            except CutRejected as why:
                rejected.append((cut.id, str(why)))
                log.warning("dropped cut %s from its batch: %s", cut.id, why)
                continue
            ids.append(cut.id)
            lens.append(n)
        width = max(lens, default=0)
        for r, n in enumerate(lens):
            buf[r, n:width] = 0.0
        if len(ids) == len(cuts) and width == buf.shape[1]:
            return ids, buf, lens, rejected
        audio = alloc((len(ids), width))  # rows were rejected or the widest was shorter than declared: compact
        audio.copy_(buf[: len(ids), :width])
        return ids, audio, lens, rejected

    def __getitem__(self, cuts: CutSet) -> AudioNoiseBatch:
        cuts = list(cuts)
        seed = self.batch_seed([c.id for c in cuts])
        aug_rng = random.Random(hash_seed(seed, "augment"))
        noise_rng = random.Random(hash_seed(seed, "noise"))
        reverb_rng = random.Random(hash_seed(seed, "reverb"))

        # In a DataLoader worker, build what goes back to the main process directly in shared memory (as
        # torch's default_collate does) and leave noise/noisy_audio to be built there (AudioNoiseBatch.compact).
        in_worker = torch.utils.data.get_worker_info() is not None
        alloc = _shared_empty if in_worker else None
        ids, audio, lens, rejected = self._read_batch(cuts, alloc or torch.empty, reverb_rng)
        self.num_rejected += len(rejected)
        audio_len = torch.tensor(lens, dtype=torch.long)
        if not ids:
            # Every cut was rejected: an empty batch (len 0) the trainer skips, rather than an exception.
            empty = torch.zeros(0, 0)
            return AudioNoiseBatch(
                sample_id=[], audio=empty, audio_len=audio_len, noise=empty.clone(), noise_len=audio_len.clone(),
                noisy_audio=empty.clone(), noisy_audio_len=audio_len.clone(), rejected=rejected, seed=seed,
            )
        batch = AudioNoiseBatch(sample_id=ids, audio=audio, audio_len=audio_len, rejected=rejected, seed=seed)
        if self.augment_on == "device":
            return batch  # decoded and cut only: DeviceAugment mixes it where it is trained on

        def noise_source(i: int, n: int) -> Optional[torch.Tensor]:
            return None if self.noise is None else self.noise.sample(n, noise_rng)

        aug = self.batch_augmentor
        if isinstance(aug, MultiSpeakerNoiseAugmentation):
            # Noise is read only for the utterances the plan puts in noise mode, and only mix_len samples.
            return aug(batch, rng=aug_rng, noise_source=noise_source, dense=not in_worker, alloc=alloc)

        if aug is not None:
            # Any other augmentor gets NeMo's input: one noise clip per utterance, of its own length.
            noise = torch.zeros_like(audio)
            if self.noise is not None:
                for i, n in enumerate(lens):
                    noise[i, :n] = noise_source(i, n)
            batch.noise, batch.noise_len = noise, audio_len.clone()
            out = aug(batch)
            out.rejected, out.seed = rejected, seed
            out.noisy_audio_len = out.audio_len.clone()  # our fix, whatever the augmentor returned
            return out

        # No augmentor: NeMo adds the raw noise clip (zeros without a noise set).
        if self.noise is None:
            spans, values = [], (alloc or torch.empty)((0,))
        else:
            spans = [(i, 0, n) for i, n in enumerate(lens)]
            values = (alloc or torch.empty)((sum(lens),))
            torch.cat([noise_source(i, n) for i, n in enumerate(lens)], out=values)
        out = AudioNoiseBatch.compact(sample_id=ids, audio=audio, audio_len=audio_len, noise_spans=spans,
                                      noise_values=values, rejected=rejected, seed=seed)
        return out if in_worker else out.materialize()


def _shared_empty(shape) -> torch.Tensor:
    """An uninitialised float32 tensor in shared memory: pickling it to the main process copies nothing."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    numel = 1
    for d in shape:
        numel *= d
    storage = torch.UntypedStorage._new_shared(max(numel, 1) * 4)
    return torch.empty(0).set_(storage, 0, shape)
