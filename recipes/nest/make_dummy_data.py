#!/usr/bin/env python3
"""Writes a small synthetic speech-like corpus as NeMo manifests, for trying the trainer without real data.

    python make_dummy_data.py                       # -> data/dummy_ssl/{train,val}_manifest.json + wav/
    python make_dummy_data.py --out-dir DIR --num-train 64 --num-val 16 --min-seconds 2 --max-seconds 6

The audio is not tones: a glottal-like pulse train with a wandering pitch (80-260 Hz) is shaped by moving vowel
formants, interleaved with noise-like fricatives and short pauses, at a syllable rate of about 4 Hz, plus a little
background noise; each "speaker" has its own pitch range and vocal-tract scale. Deterministic for a given --seed.
Manifest lines are NeMo's: {"audio_filepath": ..., "duration": ..., "text": ""}, paths relative to the manifest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410),
          (440, 1020, 2240), (660, 1720, 2410), (490, 1350, 1690)]


def _envelope(freqs: np.ndarray, formants, bandwidths=(80.0, 100.0, 140.0)) -> np.ndarray:
    """Magnitude of a cascade of formant resonators at the given frequencies (any shape)."""
    g = np.ones_like(freqs)
    for f, b in zip(formants, bandwidths):
        g = g * (f * f) / np.sqrt((f * f - freqs * freqs) ** 2 + (b * freqs) ** 2 + 1e-9)
    return g


def _syllable(rng: np.random.Generator, f0_range, scale: float) -> np.ndarray:
    n = int(rng.uniform(0.12, 0.3) * SR)
    t = np.arange(n) / SR
    f0a, f0b = rng.uniform(*f0_range, size=2)
    f0 = np.linspace(f0a, f0b, n) * (1 + 0.02 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    v1, v2 = rng.choice(len(VOWELS), size=2)
    alpha = np.linspace(0, 1, n)[None, :]
    formants = [scale * ((1 - alpha) * VOWELS[v1][i] + alpha * VOWELS[v2][i]) for i in range(3)]
    k = np.arange(1, int(4000 / f0_range[0]) + 1)[:, None]
    harm_f = k * f0[None, :]
    amp = _envelope(harm_f, formants) / k  # -6 dB/octave source tilt
    amp[harm_f > 7600] = 0.0
    voiced = (amp * np.sin(k * phase[None, :])).sum(0)
    onset = np.minimum(1.0, t / 0.02) * np.minimum(1.0, (t[-1] - t) / 0.04 + 1e-3)
    out = voiced * onset
    if rng.random() < 0.5:  # a fricative before the vowel
        m = int(rng.uniform(0.04, 0.12) * SR)
        spec = np.fft.rfft(rng.standard_normal(m))
        f = np.fft.rfftfreq(m, 1 / SR)
        centre = rng.uniform(2500, 6500)
        spec *= np.exp(-0.5 * ((f - centre) / 900.0) ** 2)
        fric = np.fft.irfft(spec, m)
        fric *= 0.4 * np.abs(voiced).max() / (np.abs(fric).max() + 1e-9)
        out = np.concatenate([fric, out])
    return out


def synth_utterance(rng: np.random.Generator, seconds: float, speaker: int) -> np.ndarray:
    srng = np.random.default_rng(1000 + speaker)
    lo = srng.uniform(80, 170)
    f0_range = (lo, lo * srng.uniform(1.3, 1.6))
    scale = srng.uniform(0.85, 1.2)
    n = int(seconds * SR)
    parts, total = [], 0
    while total < n:
        s = _syllable(rng, f0_range, scale)
        gap = np.zeros(int(rng.uniform(0.01, 0.06) * SR)) if rng.random() < 0.85 else np.zeros(int(rng.uniform(0.15, 0.4) * SR))
        parts += [s * rng.uniform(0.5, 1.0), gap]
        total += len(s) + len(gap)
    x = np.concatenate(parts)[:n]
    x = x / (np.sqrt(np.mean(x ** 2)) + 1e-9) * 0.08
    x = x + 0.002 * rng.standard_normal(n)
    return np.clip(x, -0.99, 0.99).astype(np.float32)


def write_split(out_dir: Path, split: str, count: int, rng: np.random.Generator, min_s: float, max_s: float,
                speakers: int) -> Path:
    wav_dir = out_dir / "wav" / split
    wav_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / f"{split}_manifest.json"
    with open(manifest, "w", encoding="utf-8") as f:
        for i in range(count):
            seconds = round(float(rng.uniform(min_s, max_s)), 2)
            audio = synth_utterance(rng, seconds, speaker=i % speakers)
            path = wav_dir / f"{split}_{i:05d}.wav"
            sf.write(path, audio, SR, subtype="PCM_16")
            rel = path.relative_to(out_dir).as_posix()
            f.write(json.dumps({"audio_filepath": rel, "duration": len(audio) / SR, "text": ""}) + "\n")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="data/dummy_ssl", help="output folder (default: data/dummy_ssl)")
    p.add_argument("--num-train", type=int, default=48, help="training utterances (default 48)")
    p.add_argument("--num-val", type=int, default=12, help="validation utterances (default 12)")
    p.add_argument("--min-seconds", type=float, default=1.5, help="shortest utterance (default 1.5)")
    p.add_argument("--max-seconds", type=float, default=5.0, help="longest utterance (default 5.0)")
    p.add_argument("--speakers", type=int, default=6, help="synthetic speakers (default 6)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.num_train < 1 or a.num_val < 1 or not 0 < a.min_seconds <= a.max_seconds:
        p.error("need --num-train, --num-val >= 1 and 0 < --min-seconds <= --max-seconds")
    out = Path(a.out_dir)
    rng = np.random.default_rng(a.seed)
    train = write_split(out, "train", a.num_train, rng, a.min_seconds, a.max_seconds, a.speakers)
    val = write_split(out, "val", a.num_val, rng, a.min_seconds, a.max_seconds, a.speakers)
    print(f"wrote {train} ({a.num_train} utterances) and {val} ({a.num_val})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
