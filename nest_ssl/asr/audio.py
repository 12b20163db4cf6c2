"""Audio for ASR: a file as a mono float32 waveform at the model's rate (torchaudio resampling when it differs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nest_ssl.asr.errors import ASRError, import_asr_dependency


def load_audio(path: str | Path, sample_rate: int) -> torch.Tensor:
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as err:  # soundfile's LibsndfileError is a RuntimeError
        raise ASRError(f"{path}: cannot be read as audio ({str(err).strip()[:200]})") from None
    wav = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if sr != sample_rate:
        AF = import_asr_dependency("torchaudio.functional")

        wav = AF.resample(wav, sr, sample_rate)
    if wav.numel() == 0:
        raise ASRError(f"{path}: holds no samples")
    return wav


def check_audio(paths_and_places) -> None:
    """Every file's header readable, before any output is written: (path, "manifest:line" or "") pairs."""
    import soundfile as sf

    for path, where in paths_and_places:
        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError) as err:
            place = f"{where}: " if where else ""
            raise ASRError(f"{place}{path}: cannot be read as audio ({str(err).strip().splitlines()[0][:160]}); "
                           "fix or drop it") from None
        if info.frames == 0:
            raise ASRError(f"{where + ': ' if where else ''}{path}: holds no samples; drop it")
