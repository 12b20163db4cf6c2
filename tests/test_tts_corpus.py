"""The embedded corpus (nest_ssl.prepare.tts, tts_corpus, local/make_mini_corpus.py): real espeak-ng speech.

One small corpus is generated three times: in this process (recording the texts `long_recording` returns), by
local/make_mini_corpus.py as a subprocess with the same seed, and with another seed. The checks read the files those
runs wrote: determinism, alignments against the audio, the separation of the labelled set from the pretraining
corpus (speakers and sentences), its splits, its lhotse round trip; then what a missing or broken espeak gives.
"""

import glob
import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE = os.path.join(REPO, "local", "make_mini_corpus.py")
sys.path.insert(0, os.path.join(REPO, "local"))

import make_mini_corpus  # noqa: E402

from nest_ssl.prepare.sentences import sentence_bucket  # noqa: E402
from nest_ssl.prepare.tts import Synthesizer, TTSError  # noqa: E402
from nest_ssl.prepare import tts_corpus  # noqa: E402

SEED, OTHER_SEED = 16, 17  # 16: a breathy voice (f5) in the corpus, f2 in the labelled set
SPEAKERS, BOOKS, FILES = 2, 1, 2
EVAL_SPEAKERS, EVAL_UTTERANCES = 3, 12
OPTS = dict(speakers=SPEAKERS, books=BOOKS, files=FILES, min_seconds=6.0, max_seconds=8.0,
            eval_speakers=EVAL_SPEAKERS, eval_utterances=EVAL_UTTERANCES)
SPLITS = ("train", "dev", "test")
EPS = 1e-6
ROUNDING = 1.5e-4  # alignment items keep start and duration rounded to 0.1 ms each, so an end may pass the next start


def cli(out, seed):
    return [sys.executable, MAKE, "corpus", str(out / "corpus"), "--subsets", "small", "--speakers", str(SPEAKERS),
            "--books", str(BOOKS), "--files", str(FILES), "--min-seconds", "6", "--max-seconds", "8",
            "--seed", str(seed), "--labelled-dir", str(out / "labelled"), "--eval-speakers", str(EVAL_SPEAKERS),
            "--eval-utterances", str(EVAL_UTTERANCES)]


def env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", **extra)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("tts_corpus")
    # In this process, keeping the texts of every pretraining recording (the real function runs; we only listen).
    texts = []
    real = make_mini_corpus.long_recording

    def recording(*args, **kw):
        out = real(*args, **kw)
        texts.append(out[3])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(make_mini_corpus, "long_recording", recording)
        n = make_mini_corpus.make_corpus(str(root / "a" / "corpus"), ("small",), seed=SEED,
                                         labelled_dir=str(root / "a" / "labelled"), **OPTS)
    assert n == SPEAKERS * BOOKS * FILES
    runs = {}
    for name, seed in (("b", SEED), ("c", OTHER_SEED), ("d", SEED)):
        r = subprocess.run(cli(root / name, seed), capture_output=True, text=True, timeout=300, env=env())
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = r
    return root, texts, runs


def files_under(d):
    return sorted(str(p.relative_to(d)) for p in Path(d).rglob("*") if p.is_file())


def cut_lines(labelled, split):
    with gzip.open(labelled / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def corpus_files(root):
    flacs = sorted(glob.glob(str(root / "corpus" / "small" / "*" / "*" / "*.flac")))
    return [(f, json.load(open(f[: -len(".flac")] + ".json"))) for f in flacs]


def test_the_command_reports_what_it_wrote(corpora):
    root, _, runs = corpora
    out = runs["b"].stdout
    m = re.search(r"wrote (\d+) files \((\d+\.\d+) h, (\d+\.\d+) MiB\) under (\S+) in \d+\.\d+ s; labelled set in",
                  out)
    assert m, out
    assert int(m.group(1)) == SPEAKERS * BOOKS * FILES
    hours = sum(sf.info(f).duration for f, _ in corpus_files(root / "b")) / 3600
    assert float(m.group(2)) == pytest.approx(hours, abs=0.006)
    # every file between --min-seconds and --max-seconds (plus the last sentence, which may run over)
    durations = [sf.info(f).duration for f, _ in corpus_files(root / "b")]
    assert all(5.0 <= d <= 8.0 + 8.0 for d in durations), durations


def test_same_seed_same_bytes_other_seed_other_corpus(corpora):
    root, _, _ = corpora
    a, b, c, d = root / "a", root / "b", root / "c", root / "d"
    # Two runs of the command with one seed: every file byte for byte (audio, JSON, CutSets). It is a property of a
    # fresh process: espeak's wave generator carries its state from one synthesis to the next (the same text
    # sounds slightly different after other texts), so a process that synthesised something else before (`a`, this
    # test process, after other tests) gives the same files, texts and alignments but not the same samples.
    assert files_under(a) == files_under(b) == files_under(d)
    for rel in files_under(b):
        if not rel.endswith(".jsonl.gz"):
            assert (b / rel).read_bytes() == (d / rel).read_bytes(), rel
    # the CutSets name their audio by absolute path: equal once the folder is taken out
    for split in SPLITS:
        tb = gzip.open(b / "labelled" / f"{split}.jsonl.gz", "rt").read().replace(str(b), "ROOT")
        td = gzip.open(d / "labelled" / f"{split}.jsonl.gz", "rt").read().replace(str(d), "ROOT")
        assert tb == td, split
    text = lambda x: [cut["supervisions"][0]["text"] for s in SPLITS for cut in cut_lines(x / "labelled", s)]
    assert text(a) == text(b)
    # another seed: other speakers, other audio, other sentences
    assert files_under(c / "corpus") != files_under(a / "corpus")
    audio_a = {p.read_bytes() for p in (a / "corpus").rglob("*.flac")}
    audio_c = {p.read_bytes() for p in (c / "corpus").rglob("*.flac")}
    assert not audio_a & audio_c
    assert set(text(a)) != set(text(c))


def test_corpus_json_and_voice_activity_match_the_audio(corpora):
    root, _, _ = corpora
    files = corpus_files(root / "a")
    assert len(files) == SPEAKERS * BOOKS * FILES
    for flac, meta in files:
        assert set(meta) == {"speaker", "book_meta", "snr", "voice_activity"}
        assert meta["speaker"] == Path(flac).parent.parent.name
        x, sr = sf.read(flac, dtype="float64")
        assert sr == 16000 and x.ndim == 1
        duration = len(x) / sr
        vad = meta["voice_activity"]
        assert len(vad) >= 2
        for (a, b), (c, _) in zip(vad, vad[1:] + [[duration + 1, None]]):
            assert 0.0 <= a < b <= duration + EPS and b < c, (flac, vad, duration)
        # The spans hold the speech: the power inside them over the power of the gaps (50 ms away from any span)
        # is the recorded SNR of the speech over its background.
        inside = np.zeros(len(x), bool)
        for a, b in vad:
            inside[int(a * sr):int(b * sr)] = True
        margin = int(0.05 * sr)
        near = np.convolve(inside.astype(float), np.ones(2 * margin + 1), "same") > 0
        assert (~near).sum() > 0.2 * sr  # there are pauses to measure the background in
        p_in, p_gap = np.mean(x[inside] ** 2), np.mean(x[~near] ** 2)
        measured = 10 * np.log10((p_in - p_gap) / p_gap)
        assert 25.0 <= meta["snr"] <= 45.0
        assert measured == pytest.approx(meta["snr"], abs=1.5), (flac, measured, meta["snr"])


def labelled_cuts(root):
    return {split: cut_lines(root / "labelled", split) for split in SPLITS}


def test_labelled_alignments_lie_inside_the_audio_and_on_the_speech(corpora):
    root, _, _ = corpora
    cuts = [c for split in labelled_cuts(root / "a").values() for c in split]
    assert len(cuts) == EVAL_SPEAKERS * EVAL_UTTERANCES
    for cut in cuts:
        (sup,) = cut["supervisions"]
        x, sr = sf.read(cut["recording"]["sources"][0]["source"], dtype="float64")
        assert sr == 16000 and len(x) == cut["recording"]["num_samples"]
        duration = len(x) / sr
        assert cut["duration"] == pytest.approx(duration) and sup["start"] == 0.0
        assert sup["duration"] == pytest.approx(duration)
        assert re.fullmatch(r"[a-z']+( [a-z']+)*", sup["text"]), sup["text"]  # what nest-ssl evaluate accepts
        words = [(s, t, t + d) for s, t, d, *_ in sup["alignment"]["word"]]
        phones = [(s, t, t + d) for s, t, d, *_ in sup["alignment"]["phone"]]
        assert words and phones
        for kind in (words, phones):
            for (sym, start, end), nxt in zip(kind, kind[1:] + [(None, duration + 1, None)]):
                assert sym and sym.strip() == sym
                assert 0.0 <= start < end <= duration + ROUNDING and end <= nxt[1] + ROUNDING, (sup["id"], kind)
        # every phone starts in a word, and the words cover the first to the last phone
        for sym, start, end in phones:
            assert any(w0 - ROUNDING <= start < w1 for _, w0, w1 in words), (sup["id"], sym, start, words)
        assert words[0][1] == pytest.approx(phones[0][1], abs=ROUNDING)
        assert words[-1][2] == pytest.approx(phones[-1][2], abs=ROUNDING)
        # the word segments name the words of the text, in order, each once (a segment may hold two: "in the")
        assert " ".join(sym for sym, _, _ in words) == sup["text"], (sup["id"], words)
        # the phones are on the speech: the lead-in before the first phone holds only the faint background
        speech = np.concatenate([x[int(a * sr):int(b * sr)] for _, a, b in phones])
        lead = x[: max(1, int((phones[0][1] - 0.02) * sr))]
        assert len(lead) > 0.05 * sr
        assert 10 * np.log10(np.mean(speech ** 2) / np.mean(lead ** 2)) > 20


def test_labelled_set_has_other_speakers_and_other_sentences_than_the_corpus(corpora):
    root, texts, _ = corpora
    corpus_speakers = {meta["speaker"] for _, meta in corpus_files(root / "a")}
    splits = labelled_cuts(root / "a")
    labelled_speakers = {c["supervisions"][0]["speaker"] for cuts in splits.values() for c in cuts}
    assert len(corpus_speakers) == SPEAKERS and len(labelled_speakers) == EVAL_SPEAKERS
    assert not corpus_speakers & labelled_speakers
    # and other voices, not only other ids: the pool's first speakers read the corpus, the rest the labelled set
    pool = tts_corpus.speaker_pool(SPEAKERS + EVAL_SPEAKERS, SEED)
    assert {s.id for s in pool[:SPEAKERS]} == corpus_speakers
    assert {s.id for s in pool[SPEAKERS:]} == labelled_speakers
    assert not {s.voice for s in pool[:SPEAKERS]} & {s.voice for s in pool[SPEAKERS:]}
    # the sentences the corpus was read from (as long_recording returned them): one per voice-activity span
    assert len(texts) == SPEAKERS * BOOKS * FILES
    assert [len(t) for t in texts] == [len(meta["voice_activity"]) for _, meta in corpus_files(root / "a")]
    corpus_sentences = {s for t in texts for s in t}
    labelled_sentences = {c["supervisions"][0]["text"] for cuts in splits.values() for c in cuts}
    assert len(corpus_sentences) >= SPEAKERS * BOOKS * FILES * 2 and len(labelled_sentences) > 20
    assert not corpus_sentences & labelled_sentences
    # by the rule that keeps them apart, whatever the seed: evaluation sentences hash to the evaluation buckets
    assert all(sentence_bucket(s, tts_corpus.SENTENCE_BUCKETS) < tts_corpus.EVAL_BUCKETS for s in labelled_sentences)
    assert all(sentence_bucket(s, tts_corpus.SENTENCE_BUCKETS) >= tts_corpus.EVAL_BUCKETS for s in corpus_sentences)
    # the same words, though: a model pretrained on the corpus has heard the vocabulary
    assert {w for s in labelled_sentences for w in s.split()} & {w for s in corpus_sentences for w in s.split()}


def test_labelled_splits_share_speakers_and_not_sentences(corpora):
    root, _, _ = corpora
    splits = labelled_cuts(root / "a")
    assert all(splits[s] for s in SPLITS)
    speakers = {s: {c["supervisions"][0]["speaker"] for c in splits[s]} for s in SPLITS}
    assert speakers["train"] == speakers["dev"] == speakers["test"]  # closed-set speaker identification
    sentences = {s: {c["supervisions"][0]["text"] for c in splits[s]} for s in SPLITS}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1:]:
            assert not sentences[s] & sentences[t], (s, t)
    ids = [c["id"] for s in SPLITS for c in splits[s]]
    assert len(ids) == len(set(ids))
    assert len(splits["train"]) > len(splits["dev"]) and len(splits["train"]) > len(splits["test"])


def test_labelled_cutsets_round_trip_through_lhotse(corpora, tmp_path):
    from lhotse import CutSet
    from lhotse.supervision import AlignmentItem

    root, _, _ = corpora
    for split in SPLITS:
        path = root / "a" / "labelled" / f"{split}.jsonl.gz"
        cuts = CutSet.from_file(path)
        again = tmp_path / f"{split}.jsonl.gz"
        cuts.to_file(again)
        back = CutSet.from_file(again)
        assert [c.to_dict() for c in back] == [c.to_dict() for c in cuts]
        assert cut_lines(tmp_path, split) == cut_lines(root / "a" / "labelled", split)
        for cut in back:
            (sup,) = cut.supervisions
            assert set(sup.alignment) == {"word", "phone"}
            assert all(isinstance(item, AlignmentItem) for item in sup.alignment["phone"])
            audio = cut.load_audio()
            assert audio.shape == (1, cut.num_samples) and np.abs(audio).max() > 0.1
            assert sup.speaker and sup.language == "English"


def test_known_sentences_give_their_words_and_phones():
    spk = tts_corpus.Speaker(id="1", voice="en-us", pitch=50, pitch_range=50, rate=175)
    sp = tts_corpus.synthesize(spk, "the farmer carried a basket")
    assert [w.symbol for w in sp.words] == ["the", "farmer", "carried", "a", "basket"]
    assert 0.8 < sp.duration < 3.0 and np.abs(sp.samples).max() == pytest.approx(0.5, abs=1e-3)
    # espeak's mnemonics without stress marks: "farmer" starts with f, "basket" ends with t
    assert sp.phones[0].symbol == "D" and "f" in [p.symbol for p in sp.phones]
    assert sp.phones[-1].symbol == "t" and not any("'" in p.symbol or "," in p.symbol for p in sp.phones)


def test_phones_stay_inside_their_words():
    spk = tts_corpus.Speaker(id="1", voice="en-us", pitch=50, pitch_range=50, rate=175)
    sp = tts_corpus.synthesize(spk, "her dusty ocean waited")
    for p in sp.phones:
        assert any(w.start - EPS <= p.start and p.end <= w.end + EPS for w in sp.words), (p, sp.words)


def test_every_word_of_the_text_is_in_a_segment():
    # espeak joins "in the" into one word event: that segment names both words, none is lost or cut ("farmer's")
    spk = tts_corpus.Speaker(id="1", voice="en-us", pitch=50, pitch_range=50, rate=175)
    for text in ("helen dropped this winter in the morning", "the farmer's dog slept"):
        sp = tts_corpus.synthesize(spk, text)
        assert " ".join(w.symbol for w in sp.words) == text


def test_an_unknown_voice_is_a_clear_error_and_the_synthesizer_still_works():
    synth = Synthesizer()
    with pytest.raises(TTSError, match=r"espeak-ng has no voice 'xx-nowhere'"):
        synth.synth("hello there", voice="xx-nowhere")
    assert Synthesizer() is synth  # one per process
    utt = synth.synth("hello there", voice="en-gb-x-rp")
    assert utt.sample_rate == 22050 and len(utt.samples) > 0.3 * 22050
    assert [w.symbol for w in utt.words] == ["hello", "there"]


def shim(tmp_path, kind):
    """A package named espeakng_loader, first on PYTHONPATH, that stands in for a broken install."""
    import espeakng_loader

    pkg = tmp_path / "shim" / "espeakng_loader"
    pkg.mkdir(parents=True)
    fake_lib = pkg / "libespeak-ng.so"
    fake_lib.write_text("this is not a shared library\n")
    empty = pkg / "espeak-ng-data"
    empty.mkdir()
    if kind == "import":
        body = "raise ImportError('libespeak-ng is missing from this wheel')\n"
    else:
        lib = str(fake_lib) if kind == "not_a_library" else espeakng_loader.get_library_path()
        data = espeakng_loader.get_data_path() if kind == "not_a_library" else str(empty)
        body = f"def get_library_path():\n    return {lib!r}\n\ndef get_data_path():\n    return {data!r}\n"
    (pkg / "__init__.py").write_text(body)
    return str(tmp_path / "shim"), str(fake_lib)


@pytest.mark.parametrize("kind, message", [
    ("not_a_library", r"cannot load {lib}: .*; reinstall espeakng-loader"),
    ("no_voice_data", r"espeakng-loader is broken: no library at .* or no voice data in .*espeak-ng-data; reinstall it .*"),
    ("import", r"espeak-ng is not installed: `pip install espeakng-loader`.*\(libespeak-ng is missing from this wheel\)"),
])
def test_a_broken_espeak_is_one_line_and_exit_code_2(tmp_path, kind, message):
    path, fake_lib = shim(tmp_path, kind)
    out = tmp_path / "out"
    r = subprocess.run(cli(out, SEED), capture_output=True, text=True, timeout=120,
                       env=env(PYTHONPATH=path + os.pathsep + REPO))
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert re.fullmatch(r"nest-ssl: error: " + message.format(lib=re.escape(fake_lib)), lines[0]), lines[0]
    assert not glob.glob(str(out / "corpus" / "**" / "*.flac"), recursive=True)
    assert not (out / "labelled" / "train.jsonl.gz").exists()


def test_a_failed_start_is_not_cached(tmp_path):
    path, _ = shim(tmp_path, "not_a_library")
    code = ("from nest_ssl.prepare.tts import Synthesizer, TTSError\n"
            "for _ in range(2):\n"
            "    try:\n"
            "        Synthesizer().synth('hello')\n"
            "    except TTSError as e:\n"
            "        print('TTSError', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env(PYTHONPATH=path + os.pathsep + REPO))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("TTSError cannot load") == 2, r.stdout
