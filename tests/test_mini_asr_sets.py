"""egs/mini's labelled ASR sets (nest_ssl.prepare.tts_asr through local/make_mini_corpus.py asr): real espeak-ng.

A tiny pretraining corpus and labelled set are generated in this process, listening to the texts every pretraining
recording reads; then the ASR sets are written by the command, as run.sh's stage does, with the same seed and the
corpus's speakers skipped. The checks: no ASR speaker or sentence is pretrained on, the sets' speakers are disjoint
(budgets, dev, test), no dev/test sentence is in a budget or in the LM text, the budgets are nested, and the
manifests are what `nest-ssl finetune` reads.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAKE = os.path.join(REPO, "local", "make_mini_corpus.py")
sys.path.insert(0, os.path.join(REPO, "local"))

import make_mini_corpus  # noqa: E402

from nest_ssl.prepare.tts_asr import heldout_sentence, is_eval_sentence  # noqa: E402

SEED = 3
SPEAKERS, EVAL_SPEAKERS = 2, 2
TRAIN, DEV, TEST = 3, 1, 2


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_asr")
    texts = []
    real = make_mini_corpus.long_recording

    def recording(*args, **kw):
        out = real(*args, **kw)
        texts.extend(out[3])
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(make_mini_corpus, "long_recording", recording)
        make_mini_corpus.make_corpus(str(root / "corpus"), ("small",), speakers=SPEAKERS, books=1, files=2,
                                     min_seconds=6.0, max_seconds=8.0, seed=SEED, labelled_dir=str(root / "labelled"),
                                     eval_speakers=EVAL_SPEAKERS, eval_utterances=4)
    r = subprocess.run([sys.executable, MAKE, "asr", str(root / "asr"), "--skip-speakers",
                        str(SPEAKERS + EVAL_SPEAKERS), "--train-speakers", str(TRAIN), "--dev-speakers", str(DEV),
                        "--test-speakers", str(TEST), "--budgets", "small=12,large=30", "--dev-utterances", "3",
                        "--test-utterances", "4", "--lm-sentences", "3000", "--seed", str(SEED)],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    return root, texts, r.stdout


def manifest(root, name):
    return [json.loads(line) for line in (root / "asr" / f"{name}.json").read_text().splitlines()]


def test_sets_are_written_as_nemo_manifests_with_the_sizes_asked(sets):
    root, _, out = sets
    for name, speakers, at_least in (("train_small", TRAIN, 12), ("train_large", TRAIN, 30), ("dev", DEV, 0),
                                     ("test", TEST, 0)):
        rows = manifest(root, name)
        assert rows and f"{name}: {len(rows)} utterances" in out
        assert len({r["speaker"] for r in rows}) == speakers, name
        assert sum(r["duration"] for r in rows) >= at_least, name
        for r in rows:
            info = sf.info(str(root / "asr" / r["audio_filepath"]))  # relative to the manifest's folder
            assert info.samplerate == 16000 and abs(info.duration - r["duration"]) < 1e-3
            assert r["text"] == " ".join(r["text"].split()) and r["text"]
    assert len(manifest(root, "dev")) == DEV * 3 and len(manifest(root, "test")) == TEST * 4


def test_budgets_are_nested_and_the_smaller_is_about_its_size(sets):
    root, _, _ = sets
    small, large = manifest(root, "train_small"), manifest(root, "train_large")
    assert len(small) < len(large)
    assert all(r in large for r in small)
    # each speaker reads up to its share (4 s of 12 s): over by less than one utterance each
    assert 12 <= sum(r["duration"] for r in small) < 12 + TRAIN * max(r["duration"] for r in small)


def test_no_speaker_or_sentence_is_pretrained_on_and_the_sets_are_disjoint(sets):
    root, pretrain_texts, _ = sets
    assert len(pretrain_texts) > 5
    corpus_speakers = {json.loads(p.read_text())["speaker"] for p in (root / "corpus").rglob("*.json")}
    import gzip

    labelled_speakers = set()
    for split in ("train", "dev", "test"):
        with gzip.open(root / "labelled" / f"{split}.jsonl.gz", "rt") as f:
            labelled_speakers |= {json.loads(line)["supervisions"][0]["speaker"] for line in f}
    assert len(corpus_speakers) == SPEAKERS and len(labelled_speakers) == EVAL_SPEAKERS
    spk = {n: {r["speaker"] for r in manifest(root, n)} for n in ("train_large", "dev", "test")}
    txt = {n: {r["text"] for r in manifest(root, n)} for n in ("train_large", "train_small", "dev", "test")}
    for name, speakers in spk.items():
        assert not speakers & (corpus_speakers | labelled_speakers), name
    assert not spk["train_large"] & spk["dev"] and not spk["train_large"] & spk["test"] and not spk["dev"] & spk["test"]
    pretrain = set(pretrain_texts)
    for name, texts in txt.items():
        assert not texts & pretrain, name
        assert all(is_eval_sentence(t) for t in texts), name
    assert not txt["train_large"] & (txt["dev"] | txt["test"]) and not txt["dev"] & txt["test"]
    assert all(heldout_sentence(t) for t in txt["dev"] | txt["test"])
    assert not any(heldout_sentence(t) for t in txt["train_large"])


def test_the_lm_text_has_the_grammar_but_no_dev_or_test_sentence(sets):
    root, pretrain_texts, _ = sets
    lm = (root / "asr" / "lm.txt").read_text().splitlines()
    assert len(lm) == 3000 and len(set(lm)) > 2500
    held = {r["text"] for n in ("dev", "test") for r in manifest(root, n)}
    assert not held & set(lm)
    # every word of the test sets is in the LM's vocabulary (the grammar's words): the LM can spell them
    lm_words = {w for line in lm for w in line.split()}
    assert {w for t in held for w in t.split()} <= lm_words
    # it is the grammar's sentences, pretraining-like and evaluation-like alike
    assert any(is_eval_sentence(t) for t in lm) and any(not is_eval_sentence(t) for t in lm)
