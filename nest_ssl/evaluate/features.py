"""Frozen representations, extracted once per model and kept in memory for every probe.

- `load_pretrained(path)`: a NESTModel from our .ckpt, an imported one, or a .nemo (ours or NeMo's own), through
  nest_ssl.checkpoint.model.load_model; every way that can fail becomes one EvaluationError naming the file.
- `random_init(model_cfg, seed)`: the same architecture, freshly initialised from `seed` (the baseline that tells
  what pretraining added over the architecture alone).
- `layer_outputs(model, audio)`: every hidden state of the encoder at its frame rate, (T', n_layers + 1, d_model):
  index 0 is the input of the first Conformer layer (subsampled features + xscaling), index i the output of layer
  i. Eval mode: no dropout, no masking, clean audio. `extract_feature_set` runs utterances in batches of similar
  length (sorted, little padding); the model masks padded frames everywhere, so an utterance's hidden states do not
  depend on its batch (up to float rounding).
- `stacked_fbank(model, audio)`: the model's own preprocessor output (80 log-mel, per-feature normalised) with
  `subsampling_factor` consecutive frames concatenated, (T', 1, 80 x factor): the same frame rate as the encoder.

Each frame of each layer is layer-normalised (no affine) when cached, as s3prl's featurizer does with
`normalize=True`: hidden states of a Conformer grow in scale with depth, and without it the softmax layer weights
would partly measure scale instead of usefulness.
"""

from __future__ import annotations

import logging
import math
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from nest_ssl.evaluate.data import Utterance
from nest_ssl.evaluate.errors import EvaluationError

log = logging.getLogger(__name__)

# extraction batches: at most this many padded samples (batch x longest utterance) per forward pass
MAX_BATCH_SAMPLES = 16000 * 32


@dataclass
class FeatureSet:
    """One model's cached representations: split -> one (T', L, D) float32 tensor per utterance."""

    model: str  # "pretrained", "random_init" or "fbank"
    seed: int | None
    splits: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return int(self.splits["train"][0].shape[1])

    @property
    def dim(self) -> int:
        return int(self.splits["train"][0].shape[2])


def frame_shift_of(model_cfg: Mapping) -> float:
    """Seconds per encoder frame: the preprocessor's hop times the encoder's subsampling (10 ms x 8 = 80 ms)."""
    return float(model_cfg["preprocessor"].get("window_stride", 0.01)) * subsampling_of(model_cfg)


def subsampling_of(model_cfg: Mapping) -> int:
    return int(model_cfg["encoder"].get("subsampling_factor", 8))


def load_pretrained(path: str | Path, device: str | torch.device = "cpu"):
    """(NESTModel in eval mode, model config dict); a file that is not a usable NEST model is an EvaluationError."""
    from nest_ssl.errors import UserError
    from nest_ssl.checkpoint.model import load_model

    path = Path(path)
    hint = "give a .ckpt written by nest-ssl train or import-nemo, or a .nemo of a NEST model (ours or NeMo's)"
    if not path.is_file():
        raise EvaluationError(f"--model {path}: does not exist; {hint}")
    try:
        return load_model(path, device=device)
    except UserError as err:  # CheckpointError and its kinds included
        msg = str(err)  # these already name the file: do not say it twice
        where = f"--model {msg}" if msg.startswith(str(path)) else f"--model {path}: {msg}"
        raise EvaluationError(f"{where}; {hint}") from err
    except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError, ModuleNotFoundError,
            tarfile.TarError) as err:
        # load_state_dict's mismatch report is many lines: the first one says what kind of mismatch it is
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise EvaluationError(f"--model {path}: not a usable NEST model ({type(err).__name__}: {reason}); "
                              f"{hint}") from err


def random_init(model_cfg: Mapping, seed: int, device: str | torch.device = "cpu"):
    """The same architecture with fresh weights drawn from `seed` (the global RNG is left as it was)."""
    from nest_ssl.models import NESTModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = NESTModel.from_config(dict(model_cfg))
    return model.to(device).eval()


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _features(model, audio: torch.Tensor, lengths: torch.Tensor | None = None):
    """The preprocessor over a waveform (1-D) or a zero-padded batch (B, samples) with its lengths."""
    x = (audio.reshape(1, -1) if audio.dim() == 1 else audio).to(device=_device_of(model), dtype=torch.float32)
    if lengths is None:
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
    return model.preprocessor(input_signal=x, length=lengths.to(device=x.device, dtype=torch.int64))


@torch.no_grad()
def layer_outputs_batch(model, audio: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """Every hidden state of each utterance of a zero-padded batch (B, samples): B tensors (T'_b, n_layers + 1, D).

    The preprocessor zeroes everything from each length on and the subsampling convolutions, the attention and the
    convolution modules mask padded frames, so an utterance's frames do not depend on what it is batched with (up
    to float rounding of batched matrix products)."""
    from nest_ssl.models.hooks import layer_output_hook

    if model.training:
        raise ValueError("layer_outputs needs the model in eval mode (no dropout)")
    encoder = model.encoder
    hooks = [layer_output_hook(encoder, i) for i in range(len(encoder.layers) + 1)]
    try:
        feats, feat_len = _features(model, audio, lengths)
        _, enc_len = encoder(audio_signal=feats, length=feat_len)
    finally:
        for _, handle in hooks:
            handle.remove()
    stacked = torch.stack([holder["x"] for holder, _ in hooks], dim=2).float().cpu()  # (B, T', L, D)
    return [stacked[b, :n] for b, n in enumerate(enc_len.cpu().tolist())]


@torch.no_grad()
def layer_outputs(model, audio: torch.Tensor) -> torch.Tensor:
    """(T', n_layers + 1, d_model) hidden states of one waveform (1-D tensor)."""
    return layer_outputs_batch(model, audio.reshape(1, -1), torch.tensor([audio.numel()]))[0]


@torch.no_grad()
def stacked_fbank_batch(model, audio: torch.Tensor, lengths: torch.Tensor, factor: int) -> list[torch.Tensor]:
    """(T'_b, 1, 80 x factor) per utterance of a padded batch: the preprocessor's frames, `factor` at a time (the
    last group zero-padded)."""
    feats, feat_len = _features(model, audio, lengths)
    out = []
    for b, n in enumerate(feat_len.cpu().tolist()):
        frames = feats[b, :, :n].transpose(0, 1).float().cpu()  # (T, 80)
        t_out = math.ceil(n / factor)
        frames = F.pad(frames, (0, 0, 0, t_out * factor - n))
        out.append(frames.reshape(t_out, 1, factor * frames.shape[1]))
    return out


@torch.no_grad()
def stacked_fbank(model, audio: torch.Tensor, factor: int) -> torch.Tensor:
    """(T', 1, 80 x factor) of one waveform (1-D tensor)."""
    return stacked_fbank_batch(model, audio.reshape(1, -1), torch.tensor([audio.numel()]), factor)[0]


def length_batches(lengths: Sequence[int], max_samples: int) -> list[list[int]]:
    """Indices sorted by length (ties by index) in consecutive batches whose padded size, batch x longest, stays
    within `max_samples` (at least one utterance each): little padding, few forward passes."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[i] <= max_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],))


def extract_feature_set(model, splits: Mapping[str, Sequence[Utterance]], name: str, seed: int | None,
                        fbank_factor: int | None = None, max_samples: int = MAX_BATCH_SAMPLES) -> FeatureSet:
    """Runs every utterance of every split once, in batches of similar length (`length_batches`); `fbank_factor`
    set: the stacked-fbank baseline instead."""
    out = FeatureSet(model=name, seed=seed)
    for split, utts in splits.items():
        reps: list[torch.Tensor | None] = [None] * len(utts)
        for idx in length_batches([len(u.audio) for u in utts], max_samples):
            audio = pad_sequence([torch.from_numpy(utts[i].audio) for i in idx], batch_first=True)
            lengths = torch.tensor([len(utts[i].audio) for i in idx], dtype=torch.int64)
            batch = (stacked_fbank_batch(model, audio, lengths, fbank_factor) if fbank_factor
                     else layer_outputs_batch(model, audio, lengths))
            for i, rep in zip(idx, batch):
                if rep.shape[0] == 0:
                    utt = utts[i]
                    raise EvaluationError(f"cut {utt.cut_id!r} ({split}): {utt.duration:.3f} s gives no encoder "
                                          "frame; drop cuts shorter than one frame from the CutSet")
                reps[i] = _normalised(rep)
        out.splits[split] = reps
    log.info("extracted %s%s: %d layers x %d dims for %s utterances", name,
             "" if seed is None else f" (seed {seed})", out.num_layers, out.dim,
             "/".join(str(len(v)) for v in out.splits.values()))
    return out
