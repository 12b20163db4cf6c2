#!/usr/bin/env python3
"""Generate a small corpus in LibriLight's layout, or a small noise set in MUSAN's layout, with no download.

  make_mini_corpus.py corpus OUT_DIR [--subsets small] [--speakers 4] [--books 2] [--files 2] ...
      OUT_DIR/<subset>/<speaker>/<book>/<file>.flac and <file>.json beside it. The JSON has LibriLight's keys:
      speaker, book_meta (LibriVox-like, with genre, meta_genre, "Dramatic Readings"), snr (the real SNR of
      the synthetic speech over its background), voice_activity ([onset, offset] of each utterance).
  make_mini_corpus.py noise OUT_DIR [--files 6]
      OUT_DIR/noise/free-sound/noise-free-sound-NNNN.wav and OUT_DIR/music/fma/music-fma-NNNN.wav.

The audio is speech-like rather than tones, so that what a model learns on it and what VAD-aware windowing
does with it resemble the real thing: utterances separated by pauses, each a run of syllables; a syllable is
an optional fricative (high-passed noise) and a vowel, i.e. a glottal pulse train at a speaker-specific F0
with declination and accents, shaped by that vowel's formants (scaled by the speaker's vocal tract length)
and a spectral tilt; a quiet pinkish background sets the SNR. Deterministic for a given --seed.
"""

import argparse
import json
import os
import sys

import numpy as np
import soundfile as sf

SR = 16000
# (F1, F2, F3) of a few vowels (Peterson & Barney, adult male), scaled per speaker
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480], [570, 840, 2410],
                   [660, 1720, 2410], [440, 1020, 2240], [490, 1350, 1690]], dtype=float)
GENRES = [("Literature", "General Fiction"), ("Poetry", "Poetry"), ("Science, Craft & Essay", "Essays & Short Works"),
          ("Religion", "Religion"), ("Theater", "Dramatic Works"), ("Undefined", "Undefined")]
WORDS = ["sea", "fairies", "garden", "journey", "river", "letters", "winter", "island", "stories", "voyage", "night",
         "history", "house", "mountain", "children", "king"]
FIR_TAPS = 513


def _fir(gains_at, n_fft=1024):
    """Zero-phase, Hann-windowed FIR from a magnitude response given as a function of frequency (Hz)."""
    f = np.fft.rfftfreq(n_fft, 1 / SR)
    h = np.fft.irfft(gains_at(f), n_fft)
    h = np.roll(h, FIR_TAPS // 2)[:FIR_TAPS] * np.hanning(FIR_TAPS)
    return h / (np.abs(h).sum() + 1e-9)


def _vowel_fir(formants):
    bw = np.array([90.0, 110.0, 170.0])
    amp = np.array([1.0, 0.6, 0.3])

    def gains(f):
        g = sum(a * np.exp(-0.5 * ((f - F) / b) ** 2) for F, b, a in zip(formants, bw, amp))
        return (g + 0.02) / (1 + f / 400.0)  # spectral tilt of the glottal source

    return _fir(gains)


def _fricative_fir(centre):
    return _fir(lambda f: np.exp(-0.5 * ((f - centre) / 1200.0) ** 2))


def _utterance(rng, spk, seconds):
    """Speech-like samples for one utterance of about `seconds`."""
    n = int(seconds * SR)
    out = np.zeros(n + FIR_TAPS)
    t = 0
    f0_start, f0_end = spk["f0"] * 1.15, spk["f0"] * 0.85  # declination over the utterance
    while t < n - int(0.1 * SR):
        syl = int(rng.uniform(0.12, 0.3) / spk["rate"] * SR)
        syl = min(syl, n - t)
        if rng.random() < 0.35:  # fricative onset
            m = int(rng.uniform(0.03, 0.08) * SR)
            m = min(m, syl // 3)
            noise = rng.standard_normal(m + FIR_TAPS)
            fr = np.convolve(noise, _fricative_fir(rng.uniform(3500, 6500)), mode="valid")[:m]
            out[t:t + m] += 0.2 * _unit_rms(fr) * np.hanning(m)
            t += m
            syl -= m
        if syl <= 0:
            continue
        # F0 for this vowel: declination, an accent on some syllables, jitter
        pos = t / max(n, 1)
        f0 = (f0_start + (f0_end - f0_start) * pos) * (1.0 + (0.12 if rng.random() < 0.3 else 0.0))
        f0_track = f0 * (1 + 0.03 * np.sin(np.linspace(0, np.pi, syl)) + 0.005 * rng.standard_normal(syl))
        phase = np.cumsum(f0_track / SR)
        pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
        formants = VOWELS[rng.integers(len(VOWELS))] * spk["tract"] * rng.uniform(0.95, 1.05, 3)
        voiced = _unit_rms(np.convolve(pulses, _vowel_fir(formants), mode="full"))
        env = np.ones(syl)
        ramp = min(int(0.03 * SR), syl // 2)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[syl - ramp:] = np.linspace(1, 0, ramp)
        env = np.pad(env, (0, len(voiced) - syl))
        out[t:t + len(voiced)] += voiced * env * rng.uniform(0.6, 1.0)
        t += syl
    return out[:n]


def _unit_rms(x):
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _pink(rng, n):
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec /= np.sqrt(np.maximum(f, 20.0))
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def synth_file(rng, spk, seconds):
    """(samples, VAD intervals, SNR in dB) for one file of about `seconds` of speech-like audio with pauses."""
    n = int(seconds * SR)
    speech = np.zeros(n)
    vad = []
    t = rng.uniform(0.2, 1.0)
    while True:
        dur = rng.uniform(1.5, 7.0)
        if t + dur > seconds - 0.2:
            dur = seconds - 0.2 - t
            if dur < 1.0:
                break
        a = int(t * SR)
        u = _utterance(rng, spk, dur)
        speech[a:a + len(u)] += u
        vad.append([round(t, 2), round(t + len(u) / SR, 2)])
        t += dur + rng.uniform(0.3, 1.5)
    voiced = np.concatenate([speech[int(a * SR):int(b * SR)] for a, b in vad]) if vad else speech
    p_speech = float(np.mean(voiced ** 2)) + 1e-12
    snr = rng.uniform(8.0, 30.0)
    noise = _pink(rng, n) * np.sqrt(p_speech / 10 ** (snr / 10))
    x = speech + noise
    peak = np.abs(x).max() + 1e-9
    x = x * (0.6 / peak)
    snr_real = 10 * np.log10(p_speech / float(np.mean(noise ** 2)))
    return x.astype(np.float32), vad, round(float(snr_real), 2)


def book_meta(rng, book_id, title, author):
    meta_genre, genre = GENRES[rng.integers(len(GENRES))]
    first, last = author
    return {
        "id": str(book_id),
        "title": title,
        "description": f"<p>{title} is a synthetic book made for testing; LibriVox descriptions run long.</p>",
        "url_text_source": f"http://www.gutenberg.org/etext/{book_id}",
        "language": "English",
        "copyright_year": str(1850 + int(rng.integers(100))),
        "num_sections": str(int(rng.integers(5, 40))),
        "url_rss": f"https://librivox.org/rss/{book_id}",
        "url_zip_file": f"http://www.archive.org/download/{book_id}.zip",
        "url_project": f"http://en.wikipedia.org/wiki/{title.replace(' ', '_')}",
        "url_librivox": f"https://librivox.org/{title.lower().replace(' ', '-')}/",
        "url_other": None,
        "totaltimesecs": int(rng.integers(3000, 40000)),
        "authors": [{"id": str(int(rng.integers(1, 9000))), "first_name": first, "last_name": last,
                     "dob": "1856", "dod": "1919"}],
        "genre": [genre],
        "Dramatic Readings": bool(rng.random() < 0.1),
        "meta_genre": meta_genre,
    }


def make_corpus(out_dir, subsets=("small",), speakers=4, books=2, files=2, min_seconds=20.0, max_seconds=40.0,
                seed=0, reuse_audio=False):
    """Write the corpus; returns the number of files. reuse_audio: one clip per speaker, copied to each of
    their files (each still gets its own JSON), for benchmarks that need many files fast."""
    rng = np.random.default_rng(seed)
    count = 0
    spk_id = 100
    for subset in subsets:
        for _ in range(speakers):
            spk_id += int(rng.integers(1, 50))
            female = rng.random() < 0.5
            spk = {"f0": rng.uniform(165, 235) if female else rng.uniform(85, 135),
                   "tract": rng.uniform(1.05, 1.18) if female else rng.uniform(0.92, 1.04),
                   "rate": rng.uniform(0.85, 1.2)}
            author = (["Lyman", "Jane", "Mark", "Edith", "Jules"][int(rng.integers(5))],
                      ["Baum", "Austen", "Twain", "Wharton", "Verne"][int(rng.integers(5))])
            clip_path = None
            for b in range(books):
                w1, w2 = rng.choice(WORDS, 2, replace=False)
                book_id = int(rng.integers(100, 99999))
                slug = f"{w1}_{w2}_{book_id:04d}_librivox_64kb_mp3"
                meta = book_meta(rng, book_id, f"The {w1.title()} {w2.title()}", author)
                d = os.path.join(out_dir, subset, str(spk_id), slug)
                os.makedirs(d, exist_ok=True)
                for k in range(files):
                    stem = f"{k + 1:02d}_{author[1].lower()}_{w1}_{w2}_64kb"
                    flac = os.path.join(d, stem + ".flac")
                    if reuse_audio and clip_path is not None:
                        with open(clip_path, "rb") as src, open(flac, "wb") as dst:
                            dst.write(src.read())
                        vad, snr = clip_vad, clip_snr
                    else:
                        x, vad, snr = synth_file(rng, spk, rng.uniform(min_seconds, max_seconds))
                        sf.write(flac, x, SR, subtype="PCM_16", format="FLAC")
                        clip_path, clip_vad, clip_snr = flac, vad, snr
                    with open(os.path.join(d, stem + ".json"), "w") as f:
                        json.dump({"speaker": str(spk_id), "book_meta": meta, "snr": snr, "voice_activity": vad}, f)
                    count += 1
    return count


def make_noise(out_dir, files=6, seconds=12.0, seed=1):
    """MUSAN-like layout: noise/free-sound/*.wav (coloured noise, hum, clicks) and music/fma/*.wav (chords)."""
    rng = np.random.default_rng(seed)
    n_music = max(1, files // 3)
    paths = []
    for i in range(files - n_music):
        n = int(seconds * rng.uniform(0.7, 1.3) * SR)
        kind = i % 3
        if kind == 0:
            x = _pink(rng, n)
        elif kind == 1:  # mains hum with harmonics over faint noise
            t = np.arange(n) / SR
            x = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 6.28)) / h for h in range(1, 8))
            x = x + 0.2 * _pink(rng, n)
        else:  # clicks and rustle
            x = 0.3 * rng.standard_normal(n)
            clicks = rng.integers(0, n, size=int(seconds * 4))
            x[clicks] += rng.uniform(3, 8, size=len(clicks))
        d = os.path.join(out_dir, "noise", "free-sound")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"noise-free-sound-{i:04d}.wav")
        sf.write(p, (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32), SR, subtype="PCM_16")
        paths.append(p)
    for i in range(n_music):
        n = int(seconds * SR)
        t = np.arange(n) / SR
        x = np.zeros(n)
        beat = int(0.5 * SR)
        for start in range(0, n, beat):
            root = 220 * 2 ** (int(rng.integers(0, 12)) / 12)
            seg = slice(start, min(start + beat, n))
            env = np.exp(-3 * (t[seg] - t[start]))
            for ratio in (1, 5 / 4, 3 / 2):
                x[seg] += env * np.sin(2 * np.pi * root * ratio * t[seg])
        d = os.path.join(out_dir, "music", "fma")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"music-fma-{i:04d}.wav")
        sf.write(p, (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32), SR, subtype="PCM_16")
        paths.append(p)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("corpus", help="a LibriLight-format corpus")
    c.add_argument("out_dir")
    c.add_argument("--subsets", default="small", help="comma-separated subset directories to create")
    c.add_argument("--speakers", type=int, default=4, help="speakers per subset")
    c.add_argument("--books", type=int, default=2, help="books per speaker")
    c.add_argument("--files", type=int, default=2, help="files per book")
    c.add_argument("--min-seconds", type=float, default=20.0)
    c.add_argument("--max-seconds", type=float, default=40.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--reuse-audio", action="store_true", help="one clip per speaker, copied (fast, for benchmarks)")
    n = sub.add_parser("noise", help="a MUSAN-format noise set")
    n.add_argument("out_dir")
    n.add_argument("--files", type=int, default=6)
    n.add_argument("--seconds", type=float, default=12.0)
    n.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if a.what == "corpus":
        count = make_corpus(a.out_dir, [s for s in a.subsets.split(",") if s], a.speakers, a.books, a.files,
                            a.min_seconds, a.max_seconds, a.seed, a.reuse_audio)
        print(f"wrote {count} files under {a.out_dir}")
    else:
        paths = make_noise(a.out_dir, a.files, a.seconds, a.seed)
        print(f"wrote {len(paths)} noise files under {a.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
