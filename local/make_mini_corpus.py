#!/usr/bin/env python3
"""Generate a small corpus in LibriLight's layout, or a small noise set in MUSAN's layout, with no download.

  make_mini_corpus.py corpus OUT_DIR [--subsets small] [--speakers 4] [--books 2] [--files 2] ...
                                     [--labelled-dir DIR --eval-speakers 8 --eval-utterances 40]
      OUT_DIR/<subset>/<speaker>/<book>/<file>.flac and <file>.json beside it. The JSON has LibriLight's keys:
      speaker, book_meta (LibriVox-like, with genre, meta_genre, "Dramatic Readings"), snr (the real SNR of
      the speech over its quiet background), voice_activity ([onset, offset] of each sentence, from espeak's
      phone events). With --labelled-dir, also a labelled evaluation set there: audio/ and lhotse CutSets
      {train,dev,test}.jsonl.gz with text, speaker and word/phone alignments, from speakers and sentences that
      the LibriLight-format corpus never has.
  make_mini_corpus.py noise OUT_DIR [--files 6]
      OUT_DIR/noise/free-sound/noise-free-sound-NNNN.wav and OUT_DIR/music/fma/music-fma-NNNN.wav.
  make_mini_corpus.py asr OUT_DIR --skip-speakers 56 [--train-speakers 24 --budgets 10min=600,1h=3600 ...]
      Labelled ASR sets (nest_ssl.prepare.tts_asr): NeMo manifests OUT_DIR/train_<budget>.json (nested budgets),
      dev.json, test.json (audio in OUT_DIR/audio/) and OUT_DIR/lm.txt, a language-model text without any dev or
      test sentence. The speakers are the next ones of the pool after the first --skip-speakers (those of the
      corpus and of the labelled set, with the same --seed), so none is pretrained on or in another set.

The speech is English synthesised offline by espeak-ng (nest_ssl.prepare.tts, through the espeakng-loader wheel):
sentences from our own grammar (nest_ssl.prepare.sentences) read by many speakers (accent x voice variant x pitch
x rate), so that a model pretrained on it meets real phonetic and lexical structure. Deterministic for --seed.
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import soundfile as sf

from nest_ssl.prepare.tts_asr import write_asr_sets
from nest_ssl.prepare.tts_corpus import SentenceStream, long_recording, pink_noise, speaker_pool, write_labelled_set

SR = 16000
GENRES = [("Literature", "General Fiction"), ("Poetry", "Poetry"), ("Science, Craft & Essay", "Essays & Short Works"),
          ("Religion", "Religion"), ("Theater", "Dramatic Works"), ("Undefined", "Undefined")]
WORDS = ["sea", "fairies", "garden", "journey", "river", "letters", "winter", "island", "stories", "voyage", "night",
         "history", "house", "mountain", "children", "king"]


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
                seed=0, reuse_audio=False, labelled_dir=None, eval_speakers=8, eval_utterances=40):
    """Write the corpus; returns the number of files. reuse_audio: one clip per speaker, copied to each of
    their files (each still gets its own JSON), for benchmarks that need many files fast. labelled_dir: also the
    labelled evaluation set, from `eval_speakers` speakers that the corpus does not have."""
    rng = np.random.default_rng(seed)
    pool = speaker_pool(len(subsets) * speakers + (eval_speakers if labelled_dir else 0), seed)
    sentences = SentenceStream(seed, eval=False)
    count = 0
    for s_idx, subset in enumerate(subsets):
        for spk in pool[s_idx * speakers:(s_idx + 1) * speakers]:
            author = (["Lyman", "Jane", "Mark", "Edith", "Jules"][int(rng.integers(5))],
                      ["Baum", "Austen", "Twain", "Wharton", "Verne"][int(rng.integers(5))])
            clip_path = None
            for b in range(books):
                w1, w2 = rng.choice(WORDS, 2, replace=False)
                book_id = int(rng.integers(100, 99999))
                slug = f"{w1}_{w2}_{book_id:04d}_librivox_64kb_mp3"
                meta = book_meta(rng, book_id, f"The {w1.title()} {w2.title()}", author)
                d = os.path.join(out_dir, subset, spk.id, slug)
                os.makedirs(d, exist_ok=True)
                for k in range(files):
                    stem = f"{k + 1:02d}_{author[1].lower()}_{w1}_{w2}_64kb"
                    flac = os.path.join(d, stem + ".flac")
                    if reuse_audio and clip_path is not None:
                        with open(clip_path, "rb") as src, open(flac, "wb") as dst:
                            dst.write(src.read())
                        vad, snr = clip_vad, clip_snr
                    else:
                        x, vad, snr, _ = long_recording(rng, spk, sentences, rng.uniform(min_seconds, max_seconds))
                        sf.write(flac, x, SR, subtype="PCM_16", format="FLAC")
                        clip_path, clip_vad, clip_snr = flac, vad, snr
                    with open(os.path.join(d, stem + ".json"), "w") as f:
                        json.dump({"speaker": spk.id, "book_meta": meta, "snr": snr, "voice_activity": vad}, f)
                    count += 1
    if labelled_dir:
        write_labelled_set(labelled_dir, pool[len(subsets) * speakers:], eval_utterances, seed)
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
            x = pink_noise(rng, n)
        elif kind == 1:  # mains hum with harmonics over faint noise
            t = np.arange(n) / SR
            x = sum(np.sin(2 * np.pi * 50 * h * t + rng.uniform(0, 6.28)) / h for h in range(1, 8))
            x = x + 0.2 * pink_noise(rng, n)
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


def parse_budgets(text: str) -> dict[str, float]:
    """"10min=600,1h=3600" -> {"10min": 600.0, "1h": 3600.0}."""
    out = {}
    for item in (x for x in text.split(",") if x):
        name, _, secs = item.partition("=")
        try:
            out[name] = float(secs)
        except ValueError:
            raise SystemExit(f"--budgets: '{item}' is not NAME=SECONDS (e.g. 10min=600,1h=3600)") from None
        if not name or out[name] <= 0:
            raise SystemExit(f"--budgets: '{item}' needs a name and seconds > 0 (e.g. 10min=600)")
    if not out:
        raise SystemExit("--budgets: give at least one NAME=SECONDS")
    return out


def make_asr(out_dir, skip_speakers, train_speakers=24, dev_speakers=4, test_speakers=8, budgets=None,
             dev_utterances=20, test_utterances=25, lm_sentences=5000, seed=0):
    pool = speaker_pool(skip_speakers + train_speakers + dev_speakers + test_speakers, seed)[skip_speakers:]
    return write_asr_sets(out_dir, pool[:train_speakers], pool[train_speakers:train_speakers + dev_speakers],
                          pool[train_speakers + dev_speakers:], budgets or {"10min": 600.0, "1h": 3600.0},
                          dev_utterances, test_utterances, lm_sentences, seed)


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
    c.add_argument("--labelled-dir", default=None, help="also write the labelled evaluation set here")
    c.add_argument("--eval-speakers", type=int, default=8, help="speakers of the labelled set (not in the corpus)")
    c.add_argument("--eval-utterances", type=int, default=40, help="sentences per speaker in the labelled set")
    n = sub.add_parser("noise", help="a MUSAN-format noise set")
    n.add_argument("out_dir")
    n.add_argument("--files", type=int, default=6)
    n.add_argument("--seconds", type=float, default=12.0)
    n.add_argument("--seed", type=int, default=1)
    r = sub.add_parser("asr", help="labelled ASR budgets, dev/test sets and an LM text")
    r.add_argument("out_dir")
    r.add_argument("--skip-speakers", type=int, required=True,
                   help="speakers of the pool already used (corpus speakers x subsets + labelled-set speakers)")
    r.add_argument("--train-speakers", type=int, default=24)
    r.add_argument("--dev-speakers", type=int, default=4)
    r.add_argument("--test-speakers", type=int, default=8)
    r.add_argument("--budgets", default="10min=600,1h=3600", help="NAME=SECONDS,...: nested training budgets")
    r.add_argument("--dev-utterances", type=int, default=20, help="per dev speaker")
    r.add_argument("--test-utterances", type=int, default=25, help="per test speaker")
    r.add_argument("--lm-sentences", type=int, default=5000)
    r.add_argument("--seed", type=int, default=0, help="the corpus seed (the same speaker pool)")
    a = p.parse_args(argv)
    if a.what == "asr":
        t0 = time.time()
        sets = make_asr(a.out_dir, a.skip_speakers, a.train_speakers, a.dev_speakers, a.test_speakers,
                        parse_budgets(a.budgets), a.dev_utterances, a.test_utterances, a.lm_sentences, a.seed)
        for name, info in sets.items():
            print(f"{name}: {info['utterances']} utterances, {info['seconds'] / 60:.1f} min, "
                  f"{info['speakers']} speakers")
        print(f"wrote the ASR sets and {a.lm_sentences} LM sentences under {a.out_dir} in {time.time() - t0:.1f} s")
    elif a.what == "corpus":
        t0 = time.time()
        count = make_corpus(a.out_dir, [s for s in a.subsets.split(",") if s], a.speakers, a.books, a.files,
                            a.min_seconds, a.max_seconds, a.seed, a.reuse_audio, a.labelled_dir, a.eval_speakers,
                            a.eval_utterances)
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(a.out_dir) for f in fs)
        hours = sum(sf.info(os.path.join(r, f)).duration for r, _, fs in os.walk(a.out_dir) for f in fs
                    if f.endswith(".flac")) / 3600
        print(f"wrote {count} files ({hours:.2f} h, {size / 2**20:.1f} MiB) under {a.out_dir} in "
              f"{time.time() - t0:.1f} s" + (f"; labelled set in {a.labelled_dir}" if a.labelled_dir else ""))
    else:
        paths = make_noise(a.out_dir, a.files, a.seconds, a.seed)
        print(f"wrote {len(paths)} noise files under {a.out_dir}")
    return 0


if __name__ == "__main__":
    from nest_ssl.cli.guard import run_guarded  # user errors (a full disk, no permission): one line, exit 2

    sys.exit(run_guarded(main))
