"""CTC fine-tuning of the whole encoder for `nest-ssl evaluate`, on the fine-tuning code of `nest-ssl finetune`
(nest_ssl.asr): its recognizer (nest_ssl.asr.ctc_model: NeMo's ConvASRDecoder head over our preprocessor and
encoder), its dataset and Lhotse sampler, and its loop (nest_ssl.asr.ft_loop), run without a run folder: the
splits are already in memory, the weights with the best dev CER are kept in memory and reported on test.

What differs from `nest-ssl finetune`'s defaults, for a short CPU budget: no SpecAugment, Adam with a linear warm-up
over the first 10% of steps then cosine decay, gradient clipping at 1, and the head emits `upsample` labels per
frame (decoder.upsample; see nest_ssl.evaluate.ctc) because characters outrun 80 ms frames. The vocabulary is the
evaluation's characters (nest_ssl.evaluate.data.CHARACTERS).
"""

from __future__ import annotations

import copy
import io
import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

from nest_ssl.asr.ctc_model import CTCModel, asr_config
from nest_ssl.asr.tokenizer import CharTokenizer
from nest_ssl.evaluate.data import CHARACTERS, Utterance
from nest_ssl.evaluate.metrics import cer, wer

log = logging.getLogger(__name__)

TOKENIZER = CharTokenizer(CHARACTERS)


def from_nest(nest_model, upsample: int) -> CTCModel:
    """A CTC recognizer holding a copy of the NEST model's preprocessor and encoder (the NEST model is unchanged)."""
    from omegaconf import OmegaConf

    from nest_ssl.asr.init import nest_parts

    cfg = nest_model.cfg
    cfg = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    asr_cfg = asr_config(cfg, TOKENIZER.kind, TOKENIZER.tokens())
    asr_cfg["decoder"]["upsample"] = int(upsample)
    model = CTCModel(asr_cfg)
    parts = nest_parts(nest_model)
    own = {k for k in model.state_dict() if k.startswith(("encoder.", "preprocessor."))}
    missing = sorted(own - set(parts))
    if missing:
        raise ValueError(f"the NEST model has no tensor {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict({k: v for k, v in parts.items() if k in own}, strict=False)
    return model.to(next(nest_model.parameters()).device)


def _cuts(utts: Sequence[Utterance], sample_rate: int):
    """The in-memory utterances as Lhotse cuts (audio held as wav bytes), for the fine-tuning sampler."""
    import soundfile as sf
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
    from lhotse.audio import AudioSource

    cuts = []
    for u in utts:
        buf = io.BytesIO()
        sf.write(buf, u.audio, sample_rate, format="WAV", subtype="FLOAT")
        n = len(u.audio)
        rec = Recording(id=u.cut_id, sources=[AudioSource(type="memory", channels=[0], source=buf.getvalue())],
                        sampling_rate=sample_rate, num_samples=n, duration=n / sample_rate)
        sup = SupervisionSegment(id=u.cut_id, recording_id=u.cut_id, start=0, duration=rec.duration, text=u.text)
        cuts.append(MonoCut(id=u.cut_id, start=0, duration=rec.duration, channel=0, recording=rec,
                            supervisions=[sup]))
    return CutSet.from_cuts(cuts)


def _batches(utts: Sequence[Utterance], device, batch_size: int):
    order = sorted(range(len(utts)), key=lambda i: len(utts[i].audio))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        lengths = torch.tensor([len(utts[j].audio) for j in idx], dtype=torch.int64)
        audio = torch.zeros(len(idx), int(lengths.max()))
        for row, j in enumerate(idx):
            audio[row, :len(utts[j].audio)] = torch.from_numpy(utts[j].audio)
        yield idx, audio.to(device), lengths.to(device)


@torch.no_grad()
def transcribe(model: CTCModel, utts: Sequence[Utterance], batch_size: int) -> list[str]:
    """Greedy transcripts in the order of `utts` (batched by length so that padding stays small)."""
    model.eval()
    device = next(model.parameters()).device
    hyps: dict[int, str] = {}
    for idx, audio, lengths in _batches(utts, device, batch_size):
        for j, h in zip(idx, model.greedy_texts(audio, lengths, TOKENIZER)):
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
    from nest_ssl.asr.dataset import ASRDataset
    from nest_ssl.asr.ft_config import LoopSettings
    from nest_ssl.asr.ft_loop import FitInputs, fit_in_process
    from nest_ssl.data import DataLoadingConfig, make_dataloader
    from nest_ssl.data.sampler import build_sampler

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    device = next(model.parameters()).device
    sr = model.sample_rate
    dataset = ASRDataset(TOKENIZER, sr)
    train_cfg = DataLoadingConfig(batch_size=batch_size, shuffle=True)
    sampler = build_sampler(_cuts(splits["train"], sr), train_cfg, section="finetune train", seed=seed)
    dev_sampler = build_sampler(_cuts(splits["dev"], sr), DataLoadingConfig(batch_size=batch_size),
                                section="finetune dev", seed=seed, training=False)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    eval_every = eval_every or max(1, steps // 5)
    settings = LoopSettings(max_steps=steps, max_epochs=-1, save_every=steps, val_every=eval_every,
                            log_every=max(1, eval_every), freeze_encoder_steps=0, grad_clip=grad_clip,
                            precision="32", seed=seed, devices=1, monitor="cer")
    best_state: dict = {}

    def keep_best(_path) -> None:
        best_state.clear()
        best_state.update(copy.deepcopy(model.state_dict()))

    inputs = FitInputs(model=model, tokenizer=TOKENIZER, optimizer=optimizer, scheduler=scheduler,
                       train_loader=make_dataloader(dataset, sampler, train_cfg, seed=seed),
                       dev=(dev_sampler, dataset), out_dir=None, identity={}, save=lambda path, training: None,
                       say=lambda line: log.info("finetune %s", line), on_best=keep_best)
    loop = fit_in_process(settings, inputs, device)
    model.load_state_dict(best_state)
    hyps = transcribe(model, splits["test"], batch_size)
    refs = [u.text for u in splits["test"]]
    return FineTuneOutcome(test={"cer": cer(refs, hyps), "wer": wer(refs, hyps)}, dev=float(loop.best.cer),
                           step=loop.best.step, hypotheses=hyps)
