"""The fine-tuning dataset: a Lhotse sampler's CutSet -> `ASRBatch` (padded waveforms at the model's rate, and the
transcripts tokenised here, in the DataLoader workers). Map-style, as Lhotse's samplers feed it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nest_ssl.asr.labelled import cut_text


@dataclass
class ASRBatch:
    audio: torch.Tensor  # (B, samples), zero-padded
    audio_len: torch.Tensor  # (B,) int64
    targets: list[torch.Tensor]  # token ids per utterance (int64)
    texts: list[str]
    ids: list[str]

    def to(self, device: torch.device) -> "ASRBatch":
        return ASRBatch(self.audio.to(device), self.audio_len.to(device), self.targets, self.texts, self.ids)


class ASRDataset(torch.utils.data.Dataset):
    def __init__(self, tokenizer, sample_rate: int):
        self.tokenizer = tokenizer
        self.sample_rate = int(sample_rate)

    def __getitem__(self, cuts) -> ASRBatch:
        wavs, texts, ids = [], [], []
        for cut in cuts:
            if cut.sampling_rate != self.sample_rate:
                cut = cut.resample(self.sample_rate)
            audio = cut.load_audio()  # (channels, samples)
            wavs.append(torch.from_numpy(audio.mean(axis=0)).float())
            text = cut_text(cut)
            texts.append(text or "")
            ids.append(cut.id)
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.int64)
        audio = torch.zeros(len(wavs), int(lengths.max()) if len(wavs) else 0)
        for i, w in enumerate(wavs):
            audio[i, :len(w)] = w
        targets = [torch.tensor(self.tokenizer.encode(t, i), dtype=torch.int64) for t, i in zip(texts, ids)]
        return ASRBatch(audio, lengths, targets, texts, ids)
