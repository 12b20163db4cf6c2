"""NeMo manifest -> Lhotse CutSet (nest_ssl.prepare.nemo_manifest and `nest-ssl manifest from-nemo`): real audio
files, real lhotse, the command as a subprocess."""

import os
import subprocess
import sys

import numpy as np
import pytest
from lhotse import CutSet

from nest_ssl.data.manifests import ManifestError, open_cutset
from nest_ssl.prepare.nemo_manifest import REJECTS_HEADER, convert_nemo_manifest, rejects_path_for

from nemo_corpus import SR, corpus  # noqa: F401 (corpus is a fixture)
from nemo_corpus import write_lines as _write_lines
from nemo_corpus import write_wav as _wav


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NEST_SSL_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "nest_ssl.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=240)


def _user_error(p, *needles):
    """Exit 2, no traceback, one `nest-ssl: error:` line holding every needle."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("nest-ssl: error: ")]
    assert len(errors) == 1, p.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def _rejects(path):
    lines = open(path).read().splitlines()
    assert lines[0] + "\n" == REJECTS_HEADER
    return [line.split("\t") for line in lines[1:]]


def test_roundtrip_absolute_paths_exact_durations(tmp_path, corpus):
    d, manifest = corpus
    out = tmp_path / "out" / "cuts.jsonl.gz"
    done = convert_nemo_manifest(manifest, out)
    assert (done.written, done.rejected) == (3, 0)
    assert _rejects(done.rejects_path) == [] and done.rejects_path == str(tmp_path / "out" / "rejects_cuts.tsv")
    cuts = CutSet.from_file(str(out))  # lhotse itself reads the result
    by_id = {c.id: c for c in cuts}
    assert by_id["audio/a"].custom == {"text": "hello", "speaker": 7}
    assert by_id["audio/c"].sampling_rate == 8000 and by_id["audio/c"].duration == pytest.approx(1.5)
    assert by_id["audio/b_000001500ms"].load_audio().shape == (1, 16000)
    assert os.path.isabs(by_id["audio/a"].recording.sources[0].source)
    assert not [p for p in os.listdir(out.parent) if "partial" in p]


def test_segment_lines_become_the_cuts_the_trainer_reads(tmp_path):
    """Several offset/duration segments of one file: the converted cuts have the trainer's ids, spans, custom
    fields and samples (both go through nemo_line_to_cut)."""
    d = tmp_path / "seg"
    _wav(str(d / "long.wav"), 6.0, seed=4)
    rows = [
        {"audio_filepath": "long.wav", "offset": 0.0, "duration": 2.0, "text": "one"},
        {"audio_filepath": "long.wav", "offset": 2.0, "duration": 1.5, "text": "two"},
        {"audio_filepath": "long.wav", "offset": 4.25, "duration": 1.75},
        {"audio_filepath": "long.wav", "duration": 6.0},
    ]
    manifest = _write_lines(d / "segments.json", rows)
    out = tmp_path / "segments.jsonl.gz"
    assert convert_nemo_manifest(manifest, out).written == 4
    trainer = list(open_cutset(manifest, sample_rate=SR))
    converted = list(CutSet.from_file(str(out)))
    assert [c.id for c in converted] == [c.id for c in trainer] == [
        "long_000000000ms", "long_000002000ms", "long_000004250ms", "long"]
    for t, c in zip(trainer, converted):
        assert (c.start, c.duration, c.custom) == (t.start, t.duration, t.custom)
        np.testing.assert_array_equal(c.load_audio(), t.load_audio())


def test_bad_lines_are_listed_and_the_rest_converted(tmp_path, corpus):
    d, _ = corpus
    manifest = _write_lines(
        d / "mixed.json",
        [
            {"audio_filepath": "audio/a.wav", "duration": 2.0},
            {"audio_filepath": "audio/gone.wav", "duration": 1.0},
            "{oops",
            {"audio_filepath": "audio/a.wav", "duration": 2.5},  # disagrees with the 2.0 s file
            {"audio_filepath": "audio/b.wav", "duration": 1.0, "offset": 2.5},  # runs past the end
            {"audio_filepath": "audio/b.wav", "duration": 3.0},
            {"audio_filepath": "audio/a.wav", "duration": 2.05},  # within the tolerance: kept, clipped
        ],
    )
    out = tmp_path / "mixed.jsonl"
    done = convert_nemo_manifest(manifest, out)
    assert (done.written, done.rejected) == (3, 4)
    assert [round(c.duration, 3) for c in CutSet.from_file(str(out))] == [2.0, 3.0, 2.0]
    rej = _rejects(done.rejects_path)
    assert [(r[0], r[1], r[2]) for r in rej] == [
        (manifest, "2", "audio/gone.wav"), (manifest, "3", ""), (manifest, "4", "audio/a.wav"),
        (manifest, "5", "audio/b.wav")]
    assert "audio file not found" in rej[0][3] and str(d / "audio" / "gone.wav") in rej[0][3]
    assert "not valid JSON" in rej[1][3]
    assert "'duration' 2.5 s disagrees with the audio file" in rej[2][3]
    assert "from offset 2.5 s disagrees" in rej[3][3]


def test_cli_refuses_to_write_over_its_input(tmp_path, corpus):
    d, manifest = corpus
    before = open(manifest, "rb").read()
    p = _cli("manifest", "from-nemo", manifest, manifest)
    _user_error(p, "is the input manifest", manifest, "give another output path")
    # the same file under another name (a symbolic link) is refused too
    link = tmp_path / "link.json"
    os.symlink(manifest, link)
    p = _cli("manifest", "from-nemo", manifest, link)
    _user_error(p, "is the input manifest", str(link))
    assert open(manifest, "rb").read() == before
    assert not os.path.exists(rejects_path_for(manifest))


def test_cli_keeps_going_past_bad_lines_and_says_so(tmp_path, corpus):
    d, manifest = corpus
    broken = tmp_path / "broken.json"
    broken.write_text(open(manifest).read() + '{"audio_filepath": "audio/missing.wav", "duration": 1.0}\n')
    # relative audio paths resolve against the manifest's folder: put the audio next to it
    os.symlink(d / "audio", tmp_path / "audio")
    out = tmp_path / "out.jsonl.gz"
    p = _cli("manifest", "from-nemo", broken, out)
    assert p.returncode == 0, p.stderr
    assert "wrote 3 cuts" in p.stdout
    warn = [line for line in p.stderr.splitlines() if "warning:" in line]
    assert len(warn) == 1 and "1 of 4 lines" in warn[0] and "rejects_out.tsv" in warn[0], p.stderr
    assert len(list(CutSet.from_file(str(out)))) == 3
    rej = _rejects(tmp_path / "rejects_out.tsv")
    assert len(rej) == 1 and rej[0][1] == "4" and "audio file not found" in rej[0][3]

    # every line bad: exit 2, no output, the reasons kept
    allbad = tmp_path / "allbad.json"
    allbad.write_text('{"audio_filepath": "audio/missing.wav", "duration": 1.0}\n{"audio_filepath": "x.wav"}\n')
    out2 = tmp_path / "none.jsonl.gz"
    p = _cli("manifest", "from-nemo", allbad, out2)
    _user_error(p, str(allbad), "none of its 2 line(s)", "rejects_none.tsv")
    assert not out2.exists()
    assert len(_rejects(tmp_path / "rejects_none.tsv")) == 2


def test_input_problems_are_user_errors(tmp_path, corpus):
    d, manifest = corpus
    with pytest.raises(ManifestError, match="not found"):
        convert_nemo_manifest(d / "nope.json", tmp_path / "x.jsonl.gz")
    with pytest.raises(ManifestError, match="is a directory"):
        convert_nemo_manifest(d, tmp_path / "x.jsonl.gz")
    lhotse = tmp_path / "cuts.jsonl"
    convert_nemo_manifest(manifest, lhotse)
    with pytest.raises(ManifestError, match="not a NeMo manifest line"):
        convert_nemo_manifest(lhotse, tmp_path / "again.jsonl")
