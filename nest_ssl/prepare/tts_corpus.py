"""The embedded corpus: synthetic multi-speaker English speech from espeak-ng, with word and phone alignments.

Speakers are espeak voices (English accents) x voice variants x pitch, pitch range and rate. `speaker_pool(n, seed)`
draws distinct speakers deterministically; the pretraining and the labelled sets take disjoint slices of one pool.
Sentences come from `sentences.SentenceGenerator`; `sentence_bucket` keeps evaluation sentences out of pretraining.

Deterministic for a seed in a fresh process (the command line): espeak's wave generator carries its state from one
synthesis to the next, so a process that synthesised other texts before gives the same texts and alignments but
slightly different samples.

`synthesize(speaker, text)` gives 16 kHz audio and the alignments; `write_labelled_set` writes the labelled
evaluation set as audio files and lhotse CutSets (train/dev/test) whose supervisions carry text, speaker and
`alignment={"word": [...], "phone": [...]}` (lhotse AlignmentItems, seconds from the start of the recording).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nest_ssl.prepare.sentences import SentenceGenerator, sentence_bucket
from nest_ssl.prepare.tts import Segment, Synthesizer

SAMPLE_RATE = 16000
ACCENTS = ["en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2", "klatt3"]
# Sentences whose bucket (of SENTENCE_BUCKETS) is below EVAL_BUCKETS are for evaluation only.
SENTENCE_BUCKETS = 20
EVAL_BUCKETS = 4
_STRESS = str.maketrans("", "", "',%=")


@dataclass(frozen=True)
class Speaker:
    id: str
    voice: str  # espeak voice name with variant, e.g. "en-gb-x-rp+f3"
    pitch: int  # 0-99 (espeak)
    pitch_range: int  # 0-99
    rate: int  # words per minute

    @property
    def espeak_args(self) -> dict:
        return {"voice": self.voice, "pitch": self.pitch, "pitch_range": self.pitch_range, "rate": self.rate}


def speaker_pool(n: int, seed: int = 0) -> list[Speaker]:
    """n distinct speakers: every accent x variant pair once (shuffled) before any repeats with another pitch."""
    rng = np.random.default_rng(seed)
    pairs = list(itertools.product(ACCENTS, VARIANTS))
    order = rng.permutation(len(pairs))
    speakers = []
    spk_id = 100
    for k in range(n):
        accent, variant = pairs[order[k % len(pairs)]]
        spk_id += int(rng.integers(1, 40))
        speakers.append(Speaker(
            id=str(spk_id), voice=f"{accent}+{variant}", pitch=int(rng.integers(25, 75)),
            pitch_range=int(rng.integers(30, 80)), rate=int(rng.integers(140, 200)),
        ))
    return speakers


def normalize_phones(phones: list[Segment]) -> list[Segment]:
    """espeak's mnemonics without stress marks; a mark that is no phone (espeak's ';' before a syllable) joins the
    phone after it (it starts the next word, so joining the previous one would run a word into the next); one at the
    very end joins the last phone."""
    out: list[Segment] = []
    pending: float | None = None
    for p in phones:
        sym = p.symbol.translate(_STRESS).strip().replace(";", "")
        if not sym:
            pending = p.start if pending is None else pending
            continue
        out.append(Segment(sym, pending if pending is not None else p.start, p.end))
        pending = None
    if pending is not None and out:
        out[-1] = Segment(out[-1].symbol, out[-1].start, phones[-1].end)
    return out


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling by FFT (numpy only: the same bytes for a seed whatever torch's threads, determinism
    flags or kernels; an in-process training run changes those). The signal is zero-padded to a length whose
    resampled length is whole and whose FFT is fast (a multiple of sr_in/g times a power of two)."""
    if sr_in == sr_out:
        return x
    g = math.gcd(sr_in, sr_out)
    up, down = sr_out // g, sr_in // g  # 320, 441 for 22050 -> 16000
    n = len(x)
    blocks = 1 << max(0, math.ceil(math.log2((n + 256) / down)))  # at least 256 zeros: no wrap-around
    n_pad, n_res = down * blocks, up * blocks
    spec = np.fft.rfft(x.astype(np.float64), n_pad)
    keep = min(len(spec), n_res // 2 + 1)
    out = np.fft.irfft(spec[:keep], n_res) * (n_res / n_pad)
    return out[: int(round(n * up / down))].astype(np.float32)


@dataclass
class Speech:
    samples: np.ndarray  # float32, 16 kHz
    words: list[Segment]
    phones: list[Segment]

    @property
    def duration(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def synthesize(speaker: Speaker, text: str) -> Speech:
    """One sentence by one speaker at 16 kHz, its peak at 0.5, with its word and phone alignments."""
    utt = Synthesizer().synth(text, **speaker.espeak_args)
    x = _resample(utt.samples, utt.sample_rate, SAMPLE_RATE).astype(np.float32)
    peak = float(np.abs(x).max()) if len(x) else 0.0
    if peak > 0:
        x *= 0.5 / peak
    dur = len(x) / SAMPLE_RATE
    clip = lambda segs: [Segment(s.symbol, min(s.start, dur), min(s.end, dur)) for s in segs if s.start < dur]
    return Speech(samples=x, words=clip(utt.words), phones=clip(normalize_phones(utt.phones)))


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    # The FFT runs on the next power of two (an arbitrary length can be a large prime: 100x slower), then is cut.
    m = 1 << max(1, (n - 1).bit_length())
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.fft.rfftfreq(m, 1 / SAMPLE_RATE)
    spec /= np.sqrt(np.maximum(f, 20.0))
    x = np.fft.irfft(spec, m)[:n]
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


class SentenceStream:
    """Sentences of one partition: `eval=False` never yields an evaluation sentence, `eval=True` only those."""

    def __init__(self, seed: int, eval: bool):
        self.gen = SentenceGenerator(seed)
        self.eval = eval

    def next(self) -> str:
        while True:
            s = self.gen.next()
            if (sentence_bucket(s, SENTENCE_BUCKETS) < EVAL_BUCKETS) == self.eval:
                return s


def long_recording(rng: np.random.Generator, speaker: Speaker, sentences: SentenceStream, seconds: float,
                   snr_range=(25.0, 45.0)) -> tuple[np.ndarray, list[list[float]], float, list[str]]:
    """(samples, VAD [onset, offset] per sentence, SNR in dB, texts) of about `seconds`: sentences separated by
    pauses, over a quiet pink background (LibriLight's files are long readings with pauses)."""
    pieces, vad, texts = [], [], []
    t = float(rng.uniform(0.2, 0.8))
    pieces.append(np.zeros(int(t * SAMPLE_RATE), np.float32))
    while t < seconds - 1.0:
        text = sentences.next()
        sp = synthesize(speaker, text)
        if not sp.phones:
            continue
        on, off = t + sp.phones[0].start, t + sp.phones[-1].end
        pieces.append(sp.samples * float(rng.uniform(0.6, 1.0)))
        vad.append([round(on, 3), round(off, 3)])
        texts.append(text)
        t += sp.duration
        pause = float(rng.uniform(0.3, 1.2))
        pieces.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
        t += pause
    speech = np.concatenate(pieces)
    voiced = np.concatenate([speech[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] for a, b in vad]) if vad else speech
    p_speech = float(np.mean(voiced ** 2)) + 1e-12
    snr = float(rng.uniform(*snr_range))
    noise = pink_noise(rng, len(speech)) * np.sqrt(p_speech / 10 ** (snr / 10))
    x = speech + noise
    x *= 0.7 / (float(np.abs(x).max()) + 1e-9)
    return x.astype(np.float32), vad, round(snr, 2), texts


def write_labelled_set(out_dir: str | Path, speakers: list[Speaker], utterances_per_speaker: int, seed: int = 0,
                       dev_fraction: float = 0.15, test_fraction: float = 0.15) -> dict[str, int]:
    """Writes out_dir/audio/<spk>/<id>.flac and out_dir/{train,dev,test}.jsonl.gz; returns cuts per split.

    Every speaker is in every split (speaker identification is closed-set; with three utterances or more); the
    sentences are evaluation-only ones (never in the pretraining corpus), each used once, so the splits share none.
    """
    import soundfile as sf
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.supervision import AlignmentItem

    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed + 7919)
    sentences = SentenceStream(seed + 104729, eval=True)
    cuts = {"train": [], "dev": [], "test": []}
    used: set[str] = set()
    for spk in speakers:
        (out_dir / "audio" / spk.id).mkdir(parents=True, exist_ok=True)
        mine = []  # (split key, cut) of this speaker
        for k in range(utterances_per_speaker):
            text = sentences.next()
            while text in used:  # each sentence once in the whole set, so no sentence is in two splits
                text = sentences.next()
            used.add(text)
            sp = synthesize(spk, text)
            if not sp.phones:
                continue
            lead = int(float(rng.uniform(0.1, 0.3)) * SAMPLE_RATE)
            tail = int(float(rng.uniform(0.1, 0.3)) * SAMPLE_RATE)
            x = np.concatenate([np.zeros(lead, np.float32), sp.samples, np.zeros(tail, np.float32)])
            x = x + pink_noise(rng, len(x)).astype(np.float32) * 10 ** (-40 / 20) * 0.2
            uid = f"{spk.id}-{k:04d}"
            path = out_dir / "audio" / spk.id / f"{uid}.flac"
            sf.write(str(path), x, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
            offset = lead / SAMPLE_RATE
            rec = Recording.from_file(str(path), recording_id=uid)
            ali = {kind: [AlignmentItem(symbol=s.symbol, start=round(s.start + offset, 4),
                                        duration=round(s.end - s.start, 4)) for s in segs]
                   for kind, segs in (("word", sp.words), ("phone", sp.phones))}
            sup = SupervisionSegment(id=uid, recording_id=uid, start=0.0, duration=rec.duration, channel=0,
                                     text=text, speaker=spk.id, language="English", alignment=ali)
            cut = rec.to_cut()
            cut.supervisions = [sup]
            mine.append((sentence_bucket("split:" + text, 1 << 30), cut))
        # Within each speaker, the utterances ordered by a hash of their sentence: the first shares are test and
        # dev (at least one each when the speaker has three or more), the rest train, so every split has every
        # speaker and the assignment depends only on the sentences.
        mine.sort(key=lambda kc: kc[0])
        n = len(mine)
        n_test = max(1, round(test_fraction * n)) if n >= 3 else 0
        n_dev = max(1, round(dev_fraction * n)) if n >= 3 else 0
        for i, (_, cut) in enumerate(mine):
            cuts["test" if i < n_test else "dev" if i < n_test + n_dev else "train"].append(cut)
    counts = {}
    for split, items in cuts.items():
        CutSet.from_cuts(items).to_file(str(out_dir / f"{split}.jsonl.gz"))
        counts[split] = len(items)
    return counts
