"""Labelled ASR sets for the embedded corpus: training budgets, dev and test sets, and a language-model text.

Libri-light's limited-supervision setting, in small: nested training budgets (about 10 min inside about 1 h) read
by speakers the pretraining corpus never has, dev and test sets read by other unseen speakers, and a text corpus
of the grammar's sentences for the n-gram LM. Sentences:

- the budgets, dev and test use evaluation-only sentences (`tts_corpus.SentenceStream(eval=True)`: never in the
  pretraining corpus); among them, `heldout_sentence(text)` (a stable hash) picks those for dev and test, so the
  budgets never read a dev/test sentence and dev and test share none (each sentence is read once in all);
- the LM text is the grammar's sentences (pretraining-like ones included) without any held-out one, so no dev or
  test sentence is in it, whatever the seed.

Written as NeMo ASR manifests (`audio_filepath` relative to the manifest, `duration`, `text`), one per set:
`train_<budget>.json`, `dev.json`, `test.json`, the audio in `audio/<speaker>/<id>.flac`, and `lm.txt`.
Deterministic for a seed in a fresh process (see tts_corpus: espeak carries state between syntheses).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nest_ssl.prepare.sentences import SentenceGenerator, sentence_bucket
from nest_ssl.prepare.tts_corpus import EVAL_BUCKETS, SAMPLE_RATE, SENTENCE_BUCKETS, SentenceStream, Speaker, \
    pink_noise, synthesize

HELDOUT_BUCKETS = 4  # one evaluation sentence in HELDOUT_BUCKETS is for dev/test, the rest for the budgets


def is_eval_sentence(text: str) -> bool:
    """Never in the pretraining corpus (tts_corpus's partition)."""
    return sentence_bucket(text, SENTENCE_BUCKETS) < EVAL_BUCKETS


def heldout_sentence(text: str) -> bool:
    """A dev/test sentence: an evaluation sentence in the held-out share of a second, independent hash."""
    return is_eval_sentence(text) and sentence_bucket("asr-heldout:" + text, HELDOUT_BUCKETS) == 0


def _utterance(rng: np.random.Generator, spk: Speaker, text: str, path: Path) -> float | None:
    """Synthesise one utterance as the labelled set does (short silences around, a faint noise floor); its
    duration, or None when espeak gave nothing."""
    import soundfile as sf

    sp = synthesize(spk, text)
    if not sp.phones:
        return None
    lead = int(float(rng.uniform(0.1, 0.3)) * SAMPLE_RATE)
    tail = int(float(rng.uniform(0.1, 0.3)) * SAMPLE_RATE)
    x = np.concatenate([np.zeros(lead, np.float32), sp.samples, np.zeros(tail, np.float32)])
    x = x + pink_noise(rng, len(x)).astype(np.float32) * 10 ** (-40 / 20) * 0.2
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
    return len(x) / SAMPLE_RATE


def _write_manifest(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


def write_asr_sets(out_dir: str | Path, train_speakers: list[Speaker], dev_speakers: list[Speaker],
                   test_speakers: list[Speaker], budgets: dict[str, float], dev_utterances: int,
                   test_utterances: int, lm_sentences: int, seed: int = 0) -> dict[str, dict]:
    """Writes the sets; returns {set name: {"utterances": n, "seconds": s, "speakers": k}}.

    budgets: {name: seconds of speech}; each training speaker reads sentences until it has its share of the
    largest budget, and a smaller budget takes each speaker's first utterances up to its share, so the budgets are
    nested (Libri-light's are) and every budget has every training speaker.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed + 15485863)
    train_stream = SentenceStream(seed + 32452843, eval=True)
    heldout_stream = SentenceStream(seed + 49979687, eval=True)
    used: set[str] = set()

    def draw(stream: SentenceStream, heldout: bool) -> str:
        while True:
            text = stream.next()
            if heldout_sentence(text) == heldout and text not in used:
                used.add(text)
                return text

    def row(spk: Speaker, k: int, text: str, prefix: str) -> dict | None:
        uid = f"{spk.id}-{prefix}{k:04d}"
        rel = Path("audio") / spk.id / f"{uid}.flac"
        dur = _utterance(rng, spk, text, out_dir / rel)
        return None if dur is None else {"audio_filepath": str(rel), "duration": round(dur, 4), "text": text,
                                         "speaker": spk.id}

    names = sorted(budgets, key=lambda b: budgets[b])
    largest = budgets[names[-1]]
    per_set: dict[str, list[dict]] = {f"train_{b}": [] for b in names}
    for spk in train_speakers:
        mine: list[dict] = []
        total, k = 0.0, 0
        while total < largest / len(train_speakers):
            r = row(spk, k, draw(train_stream, heldout=False), "t")
            k += 1
            if r is not None:
                mine.append(r)
                total += r["duration"]
        for b in names:
            share, acc = budgets[b] / len(train_speakers), 0.0
            for r in mine:
                if acc >= share:
                    break
                per_set[f"train_{b}"].append(r)
                acc += r["duration"]
    for name, speakers, n in (("dev", dev_speakers, dev_utterances), ("test", test_speakers, test_utterances)):
        per_set[name] = []
        for spk in speakers:
            for k in range(n):
                r = row(spk, k, draw(heldout_stream, heldout=True), name[0])
                if r is not None:
                    per_set[name].append(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in per_set.items():
        _write_manifest(out_dir / f"{name}.json", rows)
    gen = SentenceGenerator(seed + 67867967)
    lm: list[str] = []
    while len(lm) < lm_sentences:
        text = gen.next()
        if not heldout_sentence(text):
            lm.append(text)
    tmp = out_dir / "lm.txt.tmp"
    tmp.write_text("".join(t + "\n" for t in lm), encoding="utf-8")
    tmp.replace(out_dir / "lm.txt")
    return {name: {"utterances": len(rows), "seconds": round(sum(r["duration"] for r in rows), 1),
                   "speakers": len({r["speaker"] for r in rows})} for name, rows in per_set.items()}
