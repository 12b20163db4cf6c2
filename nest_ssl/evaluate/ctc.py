"""Character CTC: vocabulary, head, greedy decoding, and the frozen ASR probe over the weighted layer sum.

The vocabulary is blank (index 0) + a-z, space, apostrophe. At 80 ms per encoder frame there are 12.5 frames a
second, fewer than the 14-18 characters a second of ordinary speech, so CTC over characters could not even emit
the transcript. The head therefore emits `upsample` labels per frame (one linear map to upsample x vocabulary,
reshaped: 40 ms per label with the default 2), which is what makes character CTC possible at this frame rate.
Utterances still too fast for it get an infinite CTC loss, which is zeroed (`zero_infinity`) and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from nest_ssl.evaluate.data import CHARACTERS
from nest_ssl.evaluate.fit import fit_selected, shuffled
from nest_ssl.evaluate.metrics import cer, wer
from nest_ssl.evaluate.probes import LayerWeighting

log = logging.getLogger(__name__)

BLANK = 0
VOCABULARY = ("<blank>",) + CHARACTERS
_INDEX = {c: i for i, c in enumerate(VOCABULARY)}


def encode_text(text: str) -> torch.Tensor:
    """Character ids (1..28) of a normalised transcript."""
    return torch.tensor([_INDEX[c] for c in text], dtype=torch.int64)


def min_frames(ids: torch.Tensor) -> int:
    """The fewest CTC outputs that can emit `ids`: one per label plus a blank between repeated labels."""
    return int(len(ids) + (ids[1:] == ids[:-1]).sum()) if len(ids) else 0


def greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Best path: the argmax label per output, repeats merged, blanks removed. log_probs (B, T, V)."""
    best = log_probs.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.cpu().tolist()):
        row = row[:n]
        keep = torch.ones_like(row, dtype=torch.bool)
        keep[1:] = row[1:] != row[:-1]
        out.append("".join(VOCABULARY[i] for i in row[keep & (row != BLANK)].tolist()))
    return out


class CTCHead(nn.Module):
    """(B, T, D) -> log-probabilities (B, T x upsample, V): linear, or one small BiLSTM then linear."""

    def __init__(self, dim: int, upsample: int = 2, lstm_hidden: int = 0, vocab_size: int = len(VOCABULARY)):
        super().__init__()
        if upsample < 1:
            raise ValueError(f"upsample must be at least 1, got {upsample}")
        self.upsample = upsample
        self.vocab_size = vocab_size
        self.lstm = nn.LSTM(dim, lstm_hidden, batch_first=True, bidirectional=True) if lstm_hidden else None
        self.proj = nn.Linear(2 * lstm_hidden if lstm_hidden else dim, vocab_size * upsample)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lstm is not None:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=x.shape[1])
        b, t, _ = x.shape
        logits = self.proj(x).reshape(b, t * self.upsample, self.vocab_size)
        return logits.log_softmax(-1), lengths * self.upsample


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over the batch of the per-label CTC loss; infeasible utterances contribute zero."""
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.int64)
    return F.ctc_loss(log_probs.transpose(0, 1), torch.cat(list(targets)), lengths.cpu(), target_lengths,
                      blank=BLANK, reduction="mean", zero_infinity=True)


def count_infeasible(num_outputs: Sequence[int], targets: Sequence[torch.Tensor]) -> int:
    return sum(1 for n, t in zip(num_outputs, targets) if min_frames(t) > n)


@dataclass
class CTCOutcome:
    test: dict[str, float]  # cer, wer on test
    dev: float  # dev CER of the selected epoch
    epoch: int
    layer_weights: list[float]
    hypotheses: list[str]  # test transcripts of the selected model


class WeightedCTCProbe(nn.Module):
    def __init__(self, num_layers: int, dim: int, upsample: int, lstm_hidden: int):
        super().__init__()
        self.weighting = LayerWeighting(num_layers)
        self.head = CTCHead(dim, upsample=upsample, lstm_hidden=lstm_hidden)

    def forward(self, reps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """reps: per utterance (T', L, D) -> (log_probs (B, T' x upsample, V), output lengths)."""
        lengths = torch.tensor([r.shape[0] for r in reps], dtype=torch.int64)
        x = self.weighting(pad_sequence(list(reps), batch_first=True))  # (B, T', D)
        return self.head(x, lengths)


def decode_all(model: WeightedCTCProbe, reps: Sequence[torch.Tensor], batch_size: int) -> list[str]:
    out: list[str] = []
    for i in range(0, len(reps), batch_size):
        log_probs, lengths = model(reps[i:i + batch_size])
        out.extend(greedy_decode(log_probs, lengths))
    return out


def asr_probe(splits: dict[str, tuple[Sequence[torch.Tensor], Sequence[str]]], *, epochs: int, lr: float,
              batch_size: int, seed: int, upsample: int = 2, lstm_hidden: int = 0) -> CTCOutcome:
    """splits: split -> (per-utterance (T', L, D) representations, transcripts). CTC probe, greedy decoding."""
    torch.manual_seed(seed)
    reps = {k: list(v[0]) for k, v in splits.items()}
    texts = {k: list(v[1]) for k, v in splits.items()}
    targets = [encode_text(t) for t in texts["train"]]
    infeasible = count_infeasible([r.shape[0] * upsample for r in reps["train"]], targets)
    if infeasible:
        log.warning("asr probe: %d of %d train utterances need more CTC outputs than their frames x %d; their "
                    "loss is zeroed (raise --ctc-upsample)", infeasible, len(targets), upsample)
    model = WeightedCTCProbe(reps["train"][0].shape[1], reps["train"][0].shape[2], upsample, lstm_hidden)
    generator = torch.Generator().manual_seed(seed)

    def epoch_losses(epoch):
        for idx in shuffled(len(targets), generator, batch_size):
            log_probs, lengths = model([reps["train"][i] for i in idx])
            yield ctc_loss(log_probs, lengths, [targets[i] for i in idx])

    dev, epoch = fit_selected(model, epoch_losses, lambda: cer(texts["dev"], decode_all(model, reps["dev"], batch_size)),
                              epochs=epochs, lr=lr, higher_is_better=False, grad_clip=5.0)
    with torch.no_grad():
        hyps = decode_all(model, reps["test"], batch_size)
    return CTCOutcome(test={"cer": cer(texts["test"], hyps), "wer": wer(texts["test"], hyps)}, dev=dev, epoch=epoch,
                      layer_weights=model.weighting.weights(), hypotheses=hyps)
