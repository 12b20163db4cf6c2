"""A small NeMo-manifest corpus for the manifest tests: real wav files and JSON lines written in tmp_path."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

SR = 16000


def write_wav(path, seconds, sr=SR, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    x = (np.random.default_rng(seed).standard_normal(int(round(seconds * sr))) * 0.1).astype(np.float32)
    sf.write(path, x, sr)
    return path


def write_lines(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


@pytest.fixture
def corpus(tmp_path):
    """(folder, manifest): two 16 kHz files, one 8 kHz file; a relative path with text and speaker, a segment
    (offset), and an absolute path without a duration (read from the header)."""
    d = tmp_path / "corpus"
    write_wav(str(d / "audio" / "a.wav"), 2.0, seed=1)
    write_wav(str(d / "audio" / "b.wav"), 3.0, seed=2)
    write_wav(str(d / "audio" / "c.wav"), 1.5, sr=8000, seed=3)
    manifest = write_lines(
        d / "train.json",
        [
            {"audio_filepath": "audio/a.wav", "duration": 2.0, "text": "hello", "speaker": 7},
            {"audio_filepath": "audio/b.wav", "duration": 1.0, "offset": 1.5},
            {"audio_filepath": str(d / "audio" / "c.wav")},  # absolute, no duration: header probe
        ],
    )
    return d, manifest
