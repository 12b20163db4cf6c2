"""Metrics, CTC decoding and frame labels against values worked out by hand."""

import pytest
import torch

from nest_ssl.evaluate.ctc import BLANK, VOCABULARY, encode_text, greedy_decode, min_frames
from nest_ssl.evaluate.data import Utterance, frame_labels, normalize_text
from nest_ssl.evaluate.metrics import accuracy, cer, edit_errors, wer
from nest_ssl.evaluate.report import row, summary_table, verdict


def test_accuracy():
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 4])) == 0.75
    with pytest.raises(ValueError):
        accuracy(torch.tensor([1]), torch.tensor([1, 2]))


def test_wer_and_cer_by_hand():
    # "the cat sat" -> "the bat sat on": words: 1 substitution (cat/bat) + 1 insertion (on) over 3 words
    assert wer(["the cat sat"], ["the bat sat on"]) == pytest.approx(2 / 3)
    # characters (spaces count): c->b, then " on" inserted: 1 + 3 edits over 11 characters
    assert cer(["the cat sat"], ["the bat sat on"]) == pytest.approx(4 / 11)
    # corpus level: (0 + 2) word errors over (2 + 2) reference words, not the mean of 0 and 1
    assert wer(["a b", "c d"], ["a b", ""]) == pytest.approx(0.5)
    assert edit_errors(list("kitten"), list("sitting")) == 3  # the textbook Levenshtein example
    assert cer(["abc"], ["abc"]) == 0.0
    assert wer(["abc"], ["x y z"]) == 3.0  # insertions can push WER above 1
    with pytest.raises(ValueError):
        wer([""], ["a"])


def _one_hot_path(labels, vocab=len(VOCABULARY)):
    """Log-probabilities whose argmax path is `labels`."""
    lp = torch.full((1, len(labels), vocab), -10.0)
    for t, k in enumerate(labels):
        lp[0, t, k] = 0.0
    return lp


def test_greedy_decode_merges_repeats_and_drops_blanks():
    a, b, sp = VOCABULARY.index("a"), VOCABULARY.index("b"), VOCABULARY.index(" ")
    path = [BLANK, a, a, BLANK, a, b, b, sp, sp, b, BLANK, BLANK]
    assert greedy_decode(_one_hot_path(path), torch.tensor([len(path)])) == ["aab b"]
    # the length cuts the path: the padded tail is never decoded
    assert greedy_decode(_one_hot_path(path), torch.tensor([3])) == ["a"]


def test_ctc_vocabulary_and_min_frames():
    assert VOCABULARY[0] == "<blank>" and len(VOCABULARY) == 29
    ids = encode_text("ab'b")
    assert ids.tolist() == [1, 2, 28, 2]
    assert min_frames(encode_text("hello")) == 6  # the repeated l needs a blank between
    assert min_frames(encode_text("")) == 0


def test_frame_labels_use_recording_time_and_silence():
    utt = Utterance(cut_id="u", audio=None, start=1.0, duration=1.0, text=None, speaker=None,
                    phones=[("a", 1.08, 0.16), ("b", 1.24, 0.08)])
    # frame centres (recording time): 1.04, 1.12, 1.20, 1.28, 1.36
    assert frame_labels(utt, 5, 0.08) == ["sil", "a", "a", "b", "sil"]


def test_normalize_text():
    assert normalize_text("  The  CAT's\tsat ") == "the cat's sat"


def test_verdict_and_table():
    assert verdict(0.9, [0.5, 0.52, 0.48], higher_is_better=True) == "yes"
    assert verdict(0.55, [0.5, 0.52, 0.48], higher_is_better=True) == "no"
    assert verdict(0.1, [0.5, 0.52, 0.48], higher_is_better=False) == "yes"  # error rates: lower wins
    assert verdict(0.9, [0.5], higher_is_better=True).startswith("n/a")
    rows = [row("phone", "pretrained", 0, "accuracy", 0.9, True),
            row("phone", "random_init", 0, "accuracy", 0.5, True),
            row("phone", "random_init", 1, "accuracy", 0.7, True),
            row("phone", "fbank", 0, "accuracy", 0.8, True)]
    table = summary_table(rows)
    line = [ln for ln in table.splitlines() if ln.startswith("phone")][0]
    # mean 0.6, sample std 0.1414: 0.9 - 0.6 = 0.3 < 3 x 0.1414 -> no
    assert "0.900" in line and "0.600 ± 0.141 (n=2)" in line and "0.800" in line and line.rstrip().endswith("no")
