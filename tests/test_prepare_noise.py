"""Noise-set preparation (nest_ssl.prepare.noise, `nest-ssl prepare noise`) on generated audio."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "local"))

from make_mini_corpus import make_noise  # noqa: E402

from nest_ssl.prepare.noise import balanced_windows, prepare_noise  # noqa: E402


def _cuts(path):
    from lhotse import load_manifest

    return list(load_manifest(path))


@pytest.fixture(scope="module")
def musan(tmp_path_factory):
    root = tmp_path_factory.mktemp("musan")
    make_noise(str(root), files=6, seconds=12.0, seed=4)  # noise/free-sound (4 files), music/fma (2 files)
    speech = root / "speech" / "librivox"
    speech.mkdir(parents=True)
    sf.write(speech / "speech-librivox-0000.wav", np.zeros(16000 * 5, dtype=np.float32) + 0.01, 16000)
    return root


def test_musan_layout_uses_the_chosen_parts_and_windows_without_slivers(musan, tmp_path):
    out = tmp_path / "o"
    stats = prepare_noise(str(musan), str(out), parts=("noise", "music"), window=5.0)
    assert stats.layout == "musan" and stats.recordings == 6 and stats.rejected == 0
    cuts = _cuts(out / "noise_cuts.jsonl.gz")
    assert not any(c.recording_id.startswith("speech/") for c in cuts)  # MUSAN speech is LibriVox: left out
    assert {c.recording_id.split("/")[0] for c in cuts} == {"noise", "music"}
    by_rec = {}
    for c in cuts:
        assert c.duration <= 5.0 + 1e-9
        by_rec.setdefault(c.recording_id, []).append(c)
    for rid, ws in by_rec.items():
        rec = ws[0].recording
        # windows tile the file exactly: equal pieces, no gap, no overlap, nothing lost at the end
        ws.sort(key=lambda c: c.start)
        assert ws[0].start == 0 and abs(ws[-1].end - rec.duration) < 1e-6
        assert all(abs(a.end - b.start) < 1e-9 for a, b in zip(ws, ws[1:]))
        assert max(w.duration for w in ws) - min(w.duration for w in ws) < 2e-4
        assert len(ws) == int(np.ceil(rec.duration / 5.0 - 1e-9))
    # the windows read back as audio of their own length
    c = cuts[1]
    assert c.load_audio().shape[-1] == c.num_samples
    assert len({c.id for c in cuts}) == len(cuts)
    with_speech = prepare_noise(str(musan), str(tmp_path / "s"), parts=("speech",), window=5.0)
    assert with_speech.recordings == 1


def test_any_folder_with_a_broken_file_and_a_too_short_one(tmp_path):
    src = tmp_path / "my_noises"
    (src / "sub").mkdir(parents=True)
    sf.write(src / "hum.wav", (0.1 * np.sin(np.arange(16000 * 7) / 3.0)).astype(np.float32), 16000)
    sf.write(src / "sub" / "fan.flac", (0.05 * np.random.default_rng(0).standard_normal(16000 * 3)).astype(np.float32),
             16000, format="FLAC", subtype="PCM_16")
    sf.write(src / "click.wav", np.zeros(1600, dtype=np.float32), 16000)  # 0.1 s: shorter than min_duration
    (src / "broken.wav").write_bytes(b"RIFF....not really")
    (src / "notes.txt").write_text("not audio")
    r = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "prepare", "noise", str(src), str(tmp_path / "o"),
                        "--window", "4", "--min-duration", "0.5"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "(folder)" in r.stdout and "2 rejected" in r.stdout
    cuts = _cuts(tmp_path / "o" / "noise_cuts.jsonl.gz")
    assert sorted({c.recording_id for c in cuts}) == ["hum", "sub/fan"]
    assert len([c for c in cuts if c.recording_id == "hum"]) == 2  # 7 s -> 2 x 3.5 s
    rows = (tmp_path / "o" / "rejects_noise.tsv").read_text().splitlines()[1:]
    reasons = {row.split("\t")[0]: row.split("\t")[2] for row in rows}
    assert set(reasons) == {"broken", "click"}
    assert reasons["broken"].startswith("unreadable audio") and "shorter than min_duration" in reasons["click"]


def test_a_noise_manifest_is_windowed_too(musan, tmp_path):
    nemo = tmp_path / "noise.json"
    with open(nemo, "w") as f:
        for p in sorted((musan / "noise").rglob("*.wav")):
            info = sf.info(str(p))
            f.write(json.dumps({"audio_filepath": str(p), "duration": info.frames / info.samplerate}) + "\n")
    stats = prepare_noise(str(nemo), str(tmp_path / "o"), window=4.0)
    assert stats.layout == "manifest" and stats.recordings == 4
    assert all(c.duration <= 4.0 + 1e-9 for c in _cuts(tmp_path / "o" / "noise_cuts.jsonl.gz"))


def test_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "prepare", "noise", str(tmp_path / "empty"),
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no usable noise audio" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("duration,window,n", [(10.0, 10.0, 1), (10.01, 10.0, 2), (25.0, 10.0, 3), (3.0, 10.0, 1)])
def test_balanced_windows(duration, window, n):
    ws = list(balanced_windows(duration, window))
    assert len(ws) == n
    assert abs(sum(length for _, length in ws) - duration) < 1e-9
    assert all(length <= window + 1e-9 for _, length in ws)
