"""The ASR tests' corpus: each character is a tone of its own (0.16 s, two encoder frames at 80 ms), a space is
0.16 s of silence, so a tiny CTC model learns to read it in a few hundred steps. Written as 16 kHz wav files and
NeMo JSON-lines manifests (audio_filepath, duration, text), with an LM text file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
CHAR_SECONDS = 0.16
SENTENCES = ["the cat sat", "a dog ran", "the dog sat", "a cat ran"]
LM_TEXT = ["the cat sat", "a dog ran", "the dog sat", "a cat ran", "the cat sat on a mat", "a dog sat"]
ALPHABET = "abcdefghijklmnopqrstuvwxyz'"


def render(text: str, rng: np.random.Generator) -> np.ndarray:
    n = int(CHAR_SECONDS * SR)
    t = np.arange(n) / SR
    parts = [np.zeros(n // 2)]
    for c in text:
        if c == " ":
            parts.append(np.zeros(n))
        else:
            f = 250.0 * 2 ** (ALPHABET.index(c) / 8)  # a third of an octave apart
            parts.append(0.3 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) * np.hanning(n))
    parts.append(np.zeros(n // 2))
    wav = np.concatenate(parts)
    return (wav + 0.003 * rng.standard_normal(len(wav))).astype(np.float32)


def write_set(folder: Path, name: str, texts: list[str], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, text in enumerate(texts):
        wav = render(text, rng)
        path = folder / name / f"{name}-{i}.wav"
        sf.write(path, wav, SR)
        lines.append(json.dumps({"audio_filepath": str(path.resolve()), "duration": len(wav) / SR, "text": text}))
    manifest = folder / f"{name}.json"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def make_asr_corpus(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    lm = folder / "lm.txt"
    lm.write_text("\n".join(LM_TEXT) + "\n")
    return {"train": write_set(folder, "train", SENTENCES * 2, 0), "test": write_set(folder, "test", SENTENCES, 1),
            "lm_text": lm}


# model overrides that make the fine-tuning tests take seconds: one small Conformer layer
TINY = ["encoder.n_layers=1", "encoder.d_model=48", "encoder.n_heads=2", "encoder.subsampling_conv_channels=32",
        "preprocessor.features=40"]
