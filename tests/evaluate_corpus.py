"""A tiny labelled corpus in egs/mini stage 0's form, for the evaluation tests: real WAV files and lhotse CutSets.

Each "phone" is a pure tone (its letter is the character the text spells), words are runs of phones separated by
short silences, and each speaker adds its own low hum under everything. So phone identity is in the spectrum at
each frame, speaker identity in the hum, and the text follows the phones: every task is learnable.
Alignment times are seconds from the start of the recording (lhotse's convention); gaps are silence (no item).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
PHONE_HZ = {"a": 500.0, "e": 1100.0, "i": 1900.0, "o": 2900.0, "u": 4100.0}
WORDS = ["ae", "io", "ua", "eo", "ia", "ou", "ei", "au"]
SPEAKER_HUM_HZ = {"spk1": 110.0, "spk2": 170.0, "spk3": 240.0}
PHONE_S = 0.24
GAP_S = 0.16


def synthesize(words: list[str], speaker: str, rng: np.random.Generator):
    """(audio, word items, phone items) with items as (symbol, start, duration)."""
    pieces, word_items, phone_items = [np.zeros(int(GAP_S * SR))], [], []
    t = GAP_S
    for w in words:
        w_start = t
        for ch in w:
            n = int(PHONE_S * SR)
            time = np.arange(n) / SR
            tone = 0.4 * np.sin(2 * np.pi * PHONE_HZ[ch] * time) * np.hanning(n) ** 0.25
            pieces.append(tone)
            phone_items.append((ch, round(t, 4), PHONE_S))
            t += PHONE_S
        word_items.append((w, round(w_start, 4), round(t - w_start, 4)))
        pieces.append(np.zeros(int(GAP_S * SR)))
        t += GAP_S
    audio = np.concatenate(pieces)
    time = np.arange(len(audio)) / SR
    audio = audio + 0.15 * np.sin(2 * np.pi * SPEAKER_HUM_HZ[speaker] * time) + 0.003 * rng.standard_normal(len(audio))
    return audio.astype(np.float32), word_items, phone_items


def make_corpus(out_dir: Path, per_speaker=(4, 2, 2), seed: int = 0, phones: bool = True, speakers: bool = True,
                text: bool = True, words_per_utt=(2, 3)) -> dict[str, Path]:
    """Writes OUT/wav/*.wav and OUT/{train,dev,test}_cuts.jsonl.gz; returns {split: path}."""
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
    from lhotse.supervision import AlignmentItem

    out_dir = Path(out_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    seen = set()
    for split, count in zip(("train", "dev", "test"), per_speaker):
        cuts = []
        for spk in SPEAKER_HUM_HZ:
            for k in range(count):
                while True:  # disjoint sentences across the whole corpus
                    n = int(rng.integers(words_per_utt[0], words_per_utt[1] + 1))
                    words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
                    if " ".join(words) not in seen:
                        seen.add(" ".join(words))
                        break
                audio, w_items, p_items = synthesize(words, spk, rng)
                uid = f"{split}-{spk}-{k:02d}"
                wav = out_dir / "wav" / f"{uid}.wav"
                sf.write(wav, audio, SR)
                rec = Recording.from_file(wav, recording_id=uid)
                alignment = {}
                if phones:
                    alignment = {"word": [AlignmentItem(*w) for w in w_items],
                                 "phone": [AlignmentItem(*p) for p in p_items]}
                sup = SupervisionSegment(id=uid, recording_id=uid, start=0.0, duration=rec.duration,
                                         text=" ".join(words) if text else None,
                                         speaker=spk if speakers else None, alignment=alignment or None)
                cuts.append(MonoCut(id=uid, start=0.0, duration=rec.duration, channel=0, recording=rec,
                                    supervisions=[sup]))
        paths[split] = out_dir / f"{split}_cuts.jsonl.gz"
        CutSet.from_cuts(cuts).to_file(paths[split])
    return paths


def tiny_checkpoint(path: Path, seed: int = 123) -> Path:
    """A nest_tiny model (freshly initialised from `seed`) saved as our checkpoint format."""
    import torch
    from omegaconf import OmegaConf

    from nest_ssl.config import load_config
    from nest_ssl.models import NESTModel
    from nest_ssl.checkpoint import save_checkpoint

    cfg = OmegaConf.to_container(load_config(config_name="nest_tiny").model, resolve=True)
    torch.manual_seed(seed)
    model = NESTModel.from_config(cfg)
    ckpt = {"epoch": 0, "global_step": 0, "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "hyper_parameters": {"cfg": cfg}, "nest_ssl": {"kind": "test", "config": {"model": cfg}}}
    return save_checkpoint(ckpt, path)
