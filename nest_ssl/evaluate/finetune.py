"""CTC fine-tuning of the whole encoder, NeMo-style: preprocessor + Conformer encoder + a linear CTC head over
characters (NeMo's ConvASRDecoder is a 1x1 convolution, i.e. a linear map per frame), trained end to end.

Differences from a NeMo ASR fine-tuning run, all for a short CPU budget: no SpecAugment, Adam with a linear warm-up
over the first 10% of steps then cosine decay (NeMo: AdamW + Noam/cosine over many epochs), and the head emits
`upsample` labels per frame (see nest_ssl.evaluate.ctc) because characters outrun 80 ms frames. Dropout is the
encoder's own (train mode). The dev CER is measured every `eval_every` steps and at the end; the weights with the
best dev CER are the ones reported on test.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from nest_ssl.evaluate.ctc import CTCHead, count_infeasible, ctc_loss, encode_text, greedy_decode
from nest_ssl.evaluate.data import Utterance
from nest_ssl.evaluate.fit import better, shuffled
from nest_ssl.evaluate.metrics import cer, wer

log = logging.getLogger(__name__)


class CTCModel(nn.Module):
    """Audio -> character log-probabilities; the preprocessor and encoder of a NESTModel plus a CTC head."""

    def __init__(self, preprocessor: nn.Module, encoder: nn.Module, d_model: int, upsample: int):
        super().__init__()
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.head = CTCHead(d_model, upsample=upsample)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats, feat_len = self.preprocessor(input_signal=audio, length=lengths)
        encoded, enc_len = self.encoder(audio_signal=feats, length=feat_len)
        return self.head(encoded.transpose(1, 2), enc_len)


def from_nest(nest_model, upsample: int) -> CTCModel:
    """A CTC model holding a copy of the NEST model's preprocessor and encoder (the NEST model is not changed)."""
    encoder = copy.deepcopy(nest_model.encoder)
    d_model = int(nest_model.cfg.encoder.d_model) if getattr(encoder, "out_proj", None) is None else \
        int(encoder.out_proj.out_features)
    return CTCModel(copy.deepcopy(nest_model.preprocessor), encoder, d_model, upsample)


def _batch(utts: Sequence[Utterance], device) -> tuple[torch.Tensor, torch.Tensor]:
    audio = pad_sequence([torch.from_numpy(u.audio) for u in utts], batch_first=True).to(device)
    lengths = torch.tensor([len(u.audio) for u in utts], dtype=torch.int64, device=device)
    return audio, lengths


@torch.no_grad()
def transcribe(model: CTCModel, utts: Sequence[Utterance], batch_size: int) -> list[str]:
    """Greedy transcripts in the order of `utts` (batched by length so that padding stays small)."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(utts)), key=lambda i: len(utts[i].audio))
    hyps: dict[int, str] = {}
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        log_probs, lengths = model(*_batch([utts[j] for j in idx], device))
        for j, h in zip(idx, greedy_decode(log_probs, lengths)):
            hyps[j] = h
    return [hyps[i] for i in range(len(utts))]


def _lr_factor(step: int, steps: int) -> float:
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@dataclass
class FineTuneOutcome:
    test: dict[str, float]
    dev: float
    step: int  # the selected step
    hypotheses: list[str]


def finetune(model: CTCModel, splits: dict[str, Sequence[Utterance]], *, steps: int, lr: float, batch_size: int,
             seed: int, eval_every: int | None = None, grad_clip: float = 1.0) -> FineTuneOutcome:
    """Trains `model` end to end on splits["train"] for `steps` steps; reports test CER/WER of the best-on-dev."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    train = list(splits["train"])
    targets = [encode_text(u.text) for u in train]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    eval_every = eval_every or max(1, steps // 5)
    dev_refs = [u.text for u in splits["dev"]]
    best, best_step, best_state = None, -1, None
    batches: list[torch.Tensor] = []
    infeasible = 0
    for step in range(steps):
        if not batches:
            batches = shuffled(len(train), generator, batch_size)
        idx = batches.pop(0).tolist()
        model.train()
        log_probs, lengths = model(*_batch([train[i] for i in idx], device))
        batch_targets = [targets[i] for i in idx]
        infeasible += count_infeasible(lengths.tolist(), batch_targets)
        loss = ctc_loss(log_probs.float().cpu(), lengths.cpu(), batch_targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            score = cer(dev_refs, transcribe(model, splits["dev"], batch_size))
            log.info("finetune step %d: loss %.3f, dev CER %.3f", step + 1, float(loss.detach()), score)
            if better(score, best, higher_is_better=False):
                best, best_step = score, step + 1
                best_state = copy.deepcopy(model.state_dict())
    if infeasible:
        log.warning("finetune: %d times a train utterance needed more CTC outputs than its frames x upsample; its "
                    "loss was zeroed (raise --ctc-upsample)", infeasible)
    model.load_state_dict(best_state)
    hyps = transcribe(model, splits["test"], batch_size)
    refs = [u.text for u in splits["test"]]
    return FineTuneOutcome(test={"cer": cer(refs, hyps), "wer": wer(refs, hyps)}, dev=float(best), step=best_step,
                           hypotheses=hyps)
