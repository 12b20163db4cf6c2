"""open_cutset: real small audio files written here, real lhotse (NeMo conversion: test_prepare_nemo_manifest.py)."""

import gzip

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from nest_ssl.data.manifests import ManifestError, open_cutset

from nemo_corpus import corpus  # noqa: F401 (corpus is a fixture)
from nemo_corpus import write_lines as _write_lines


def test_nemo_manifest_streams_as_cuts_with_custom_fields_and_resolved_paths(corpus):
    d, manifest = corpus
    cuts = open_cutset(manifest)
    assert cuts.is_lazy
    got = list(cuts)
    assert [c.id for c in got] == ["audio/a", "audio/b_000001500ms", "audio/c"]
    a, b, c = got
    assert a.custom == {"text": "hello", "speaker": 7}
    assert a.recording.sources[0].source == str(d / "audio" / "a.wav")
    assert (a.start, a.duration) == (0.0, 2.0)
    assert (b.start, b.duration) == (1.5, 1.0)
    # c had no duration: read from the header, including its own sampling rate
    assert c.duration == pytest.approx(1.5) and c.sampling_rate == 8000
    # and the audio spans match what the manifest says
    assert a.load_audio().shape == (1, 32000)
    ref, _ = sf.read(str(d / "audio" / "b.wav"), dtype="float32")
    np.testing.assert_allclose(b.load_audio()[0], ref[24000:40000], atol=1e-6)
    assert len(cuts) == 3
    # iterating twice re-reads the file (lazy, nothing cached)
    assert [x.id for x in cuts] == [x.id for x in got]


def test_nemo_lines_with_duration_touch_no_audio(tmp_path):
    # The audio does not exist: open + iterate must still work, proving nothing is read when duration is given.
    manifest = _write_lines(tmp_path / "m.json", [{"audio_filepath": "nope/x.wav", "duration": 4.25, "sampling_rate": 8000}])
    (cut,) = list(open_cutset(manifest))
    assert cut.duration == 4.25 and cut.sampling_rate == 8000 and cut.num_samples == 34000
    assert cut.recording.sources[0].source == str(tmp_path / "nope" / "x.wav")


def test_lhotse_cuts_recordings_lists_and_comma_strings(tmp_path, corpus):
    d, nemo = corpus
    recs = RecordingSet.from_recordings(
        [Recording.from_file(str(d / "audio" / n), recording_id=n[0]) for n in ("a.wav", "b.wav")]
    )
    rec_path = str(tmp_path / "recs.jsonl.gz")
    recs.to_file(rec_path)
    cut_path = str(tmp_path / "cuts.jsonl.gz")
    CutSet.from_manifests(recordings=recs).to_file(cut_path)

    from_recs = list(open_cutset(rec_path))
    assert [c.id for c in from_recs] == ["a", "b"] and from_recs[1].duration == pytest.approx(3.0)
    assert [c.id for c in open_cutset(cut_path)] == [c.id for c in CutSet.from_file(cut_path)]

    combined = [c.id for c in open_cutset(f"{rec_path}, {nemo}")]
    assert combined == ["a", "b", "audio/a", "audio/b_000001500ms", "audio/c"]
    assert [c.id for c in open_cutset([nemo, rec_path])] == combined[2:] + combined[:2]


def test_not_json_line_names_file_and_line(tmp_path):
    manifest = _write_lines(
        tmp_path / "m.json",
        [{"audio_filepath": "a.wav", "duration": 1.0}, "", '{"audio_filepath": "b.wav", duration: 2}'],
    )
    cuts = open_cutset(manifest, what="train_ds.manifest_filepath")
    with pytest.raises(ManifestError) as e:
        list(cuts)
    msg = str(e.value)
    assert f"{manifest}:3" in msg and "not valid JSON" in msg and "train_ds.manifest_filepath" in msg
    assert e.value.line == 3

    # the same in a gzipped lhotse manifest, caught up front when it is the first line
    bad = tmp_path / "bad.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write("not json at all\n")
    with pytest.raises(ManifestError, match=r"bad\.jsonl\.gz:1: line is not valid JSON"):
        open_cutset(str(bad))


def test_empty_missing_and_unusable_manifests(tmp_path):
    empty = _write_lines(tmp_path / "empty.json", ["", "   "])
    with pytest.raises(ManifestError, match=r"noise_manifest: .*empty\.json: manifest is empty"):
        open_cutset(empty, what="noise_manifest")
    with pytest.raises(ManifestError, match=r"manifest not found: .*missing\.json"):
        open_cutset(str(tmp_path / "missing.json"))
    with pytest.raises(ManifestError, match="no manifest given"):
        open_cutset(" , ")
    sups = tmp_path / "sups.jsonl.gz"
    SupervisionSet.from_segments([SupervisionSegment("s", "r", 0.0, 1.0)]).to_file(str(sups))
    with pytest.raises(ManifestError, match="SupervisionSet"):
        open_cutset(str(sups))
    odd = _write_lines(tmp_path / "odd.json", [{"path": "a.wav"}])
    with pytest.raises(ManifestError, match=r"odd\.json:1: unrecognised manifest line"):
        open_cutset(odd)
    (tmp_path / "notshar").mkdir()
    with pytest.raises(ManifestError, match="not a Lhotse Shar directory"):
        open_cutset(str(tmp_path / "notshar"))
    neg = _write_lines(tmp_path / "neg.json", [{"audio_filepath": "a.wav", "duration": -1}])
    with pytest.raises(ManifestError, match=r"neg\.json:1: 'duration'"):
        list(open_cutset(neg))
