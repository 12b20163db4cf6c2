"""Training windows over real audio with VAD-like supervisions, lazily."""


import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, SupervisionSegment

from nest_ssl.data.manifests import ManifestError, open_cutset
from nest_ssl.prepare.windows import balanced_split, make_training_windows, merge_supervision_spans

SR = 8000  # small files; windows only need a header and sample-exact spans


def _recording(tmp_path, name, seconds):
    path = str(tmp_path / f"{name}.wav")
    sf.write(path, (np.random.default_rng(0).standard_normal(int(seconds * SR)) * 0.1).astype(np.float32), SR)
    return Recording.from_file(path, recording_id=name)


def test_merge_spans_across_short_pauses_only_within_max_duration():
    spans = [(3.3, 6.0), (0.5, 3.0), (9.0, 10.0), (10.5, 11.0)]
    assert merge_supervision_spans(spans, max_pause=1.0, max_duration=30) == [(0.5, 6.0), (9.0, 11.0)]
    # a merge that would exceed max_duration starts a new group instead
    assert merge_supervision_spans(spans, max_pause=1.0, max_duration=5.0) == [(0.5, 3.0), (3.3, 6.0), (9.0, 11.0)]
    # overlapping spans always merge
    assert merge_supervision_spans([(0, 4), (3, 8)], max_pause=0.0, max_duration=5) == [(0, 8)]


def test_balanced_split_has_no_short_tail():
    pieces = balanced_split(0.0, 65.0, min_duration=1.0, max_duration=30.0)
    assert len(pieces) == 3 and all(b - a == pytest.approx(65 / 3) for a, b in pieces)
    assert pieces[0][0] == 0.0 and pieces[-1][1] == 65.0
    assert balanced_split(0.0, 0.5, min_duration=1.0, max_duration=30.0) == []
    # min > max/2: equal pieces would be too short, so max-length pieces and the short rest is dropped
    assert balanced_split(0.0, 11.0, min_duration=4.0, max_duration=5.0) == [(0.0, 5.0), (5.0, 10.0)]


def test_vad_windows_merge_split_drop_and_load(tmp_path):
    rec = _recording(tmp_path, "book", 40.0)
    sups = [
        (0.5, 2.5),  # pause 0.3 to the next -> merged: [0.5, 6.0]
        (3.3, 2.7),
        (9.0, 1.0),  # 3 s pause before -> alone: 1.0 s (kept, == min)
        (12.0, 0.3),  # alone and too short -> dropped
        (15.0, 24.0),  # longer than max -> 3 balanced pieces of 8 s
    ]
    cut = rec.to_cut()
    cut.supervisions = [
        SupervisionSegment(f"book-{i}", "book", start=s, duration=d) for i, (s, d) in enumerate(sups)
    ]
    src = tmp_path / "cuts.jsonl.gz"
    CutSet([cut]).to_file(str(src))

    windows = make_training_windows(open_cutset(str(src)), min_duration=1.0, max_duration=10.0, max_pause=1.0)
    assert windows.is_lazy
    got = list(windows)
    spans = [(round(w.start, 3), round(w.end, 3)) for w in got]
    assert spans == [(0.5, 6.0), (9.0, 10.0), (15.0, 23.0), (23.0, 31.0), (31.0, 39.0)]
    assert [w.id for w in got][:2] == ["book_00000500-00006000", "book_00009000-00010000"]
    assert all(1.0 <= w.duration <= 10.0 for w in got)
    # the merged window keeps its two VAD segments; split pieces of one long segment keep none
    assert [s.id for s in got[0].supervisions] == ["book-0", "book-1"]
    assert got[2].supervisions == []
    # sample-exact audio spans
    for w in got:
        assert w.load_audio().shape == (1, round(w.duration * SR))
    # deterministic: a second pass gives the same windows
    assert [w.id for w in windows] == [w.id for w in got]


def test_fixed_windows_without_supervisions_cover_the_recording(tmp_path):
    long_cut = _recording(tmp_path, "long", 25.0).to_cut()
    short_cut = _recording(tmp_path, "short", 4.0).to_cut()
    tiny = _recording(tmp_path, "tiny", 0.5).to_cut()
    got = list(make_training_windows(CutSet([long_cut, short_cut, tiny]), min_duration=1.0, max_duration=10.0))
    long_pieces = [w for w in got if w.recording_id == "long"]
    assert len(long_pieces) == 3
    assert long_pieces[0].start == 0.0 and long_pieces[-1].end == pytest.approx(25.0)
    assert all(w.duration == pytest.approx(25 / 3, abs=1 / SR) for w in long_pieces)
    # a cut that already fits passes through unchanged; a too-short one is dropped
    assert [w.id for w in got if w.recording_id != "long"] == ["short"]


def test_min_duration_that_removes_everything_is_reported(tmp_path):
    cuts = CutSet([_recording(tmp_path, "r", 2.0).to_cut()])
    with pytest.raises(ManifestError, match=r"min_duration=5\.0 s removed every window of all 1 input cuts"):
        list(make_training_windows(cuts, min_duration=5.0, max_duration=10.0))
    with pytest.raises(ValueError, match="min_duration <= max_duration"):
        make_training_windows(cuts, min_duration=5.0, max_duration=1.0)
