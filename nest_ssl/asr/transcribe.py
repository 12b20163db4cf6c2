"""Running an ASR model over audio files: batched forward passes, decoding (CTC: greedy or an LMDecoder; RNN-T:
an RNNTSearch, greedy or beam), real-time factor."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nest_ssl.asr.audio import load_audio


@dataclass
class Transcripts:
    texts: list[str]
    audio_seconds: float
    compute_seconds: float

    @property
    def rtf(self) -> float:
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else 0.0


@torch.no_grad()
def transcribe(model, tokenizer, audio_paths: Sequence[Path], method=None,
               batch_size: int = 8) -> Transcripts:
    sr = model.sample_rate
    texts: list[str] = []
    audio_seconds = 0.0
    compute = 0.0
    for i in range(0, len(audio_paths), batch_size):
        wavs = [load_audio(p, sr) for p in audio_paths[i:i + batch_size]]  # reading is not decoding time
        start = time.perf_counter()
        lengths = torch.tensor([len(w) for w in wavs])
        batch = torch.zeros(len(wavs), int(lengths.max()))
        for j, w in enumerate(wavs):
            batch[j, :len(w)] = w
        out, out_len = model(batch, lengths)
        texts.extend(model.decode(out, out_len, tokenizer, method))  # None: greedy
        compute += time.perf_counter() - start
        audio_seconds += float(lengths.sum()) / sr
    return Transcripts(texts, audio_seconds, compute)
