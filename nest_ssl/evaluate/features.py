"""Frozen representations, extracted once per model and kept in memory for every probe.

- `load_pretrained(path)`: a NESTModel from our .ckpt, an imported one, or a .nemo (ours or NeMo's own), through
  nest_ssl.export.nemo.load_model; every way that can fail becomes one EvaluationError naming the file.
- `random_init(model_cfg, seed)`: the same architecture, freshly initialised from `seed` (the baseline that tells
  what pretraining added over the architecture alone).
- `layer_outputs(model, audio)`: every hidden state of the encoder at its frame rate, (T', n_layers + 1, d_model):
  index 0 is the input of the first Conformer layer (subsampled features + xscaling), index i the output of layer
  i. Eval mode: no dropout, no masking, clean audio; one utterance at a time, so nothing depends on padding.
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

from nest_ssl.evaluate.data import Utterance
from nest_ssl.evaluate.errors import EvaluationError

log = logging.getLogger(__name__)


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
    from nest_ssl.export.nemo import ExportError, load_model
    from nest_ssl.train.checkpoint import CorruptCheckpointError

    path = Path(path)
    hint = "give a .ckpt written by nest-ssl train or import-nemo, or a .nemo of a NEST model (ours or NeMo's)"
    if not path.is_file():
        raise EvaluationError(f"--model {path}: does not exist; {hint}")
    try:
        return load_model(path, device=device)
    except (ExportError, CorruptCheckpointError, UserError) as err:
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
def _features(model, audio: torch.Tensor):
    x = audio.reshape(1, -1).to(device=_device_of(model), dtype=torch.float32)
    length = torch.tensor([x.shape[1]], dtype=torch.int64, device=x.device)
    return model.preprocessor(input_signal=x, length=length)


@torch.no_grad()
def layer_outputs(model, audio: torch.Tensor) -> torch.Tensor:
    """(T', n_layers + 1, d_model) hidden states of one waveform (1-D tensor)."""
    from nest_ssl.export.extract import _layer_hook

    if model.training:
        raise ValueError("layer_outputs needs the model in eval mode (no dropout)")
    encoder = model.encoder
    hooks = [_layer_hook(encoder, i) for i in range(len(encoder.layers) + 1)]
    try:
        feats, feat_len = _features(model, audio)
        _, enc_len = encoder(audio_signal=feats, length=feat_len)
    finally:
        for _, handle in hooks:
            handle.remove()
    n = int(enc_len[0])
    return torch.stack([holder["x"][0, :n] for holder, _ in hooks], dim=1).float().cpu()


@torch.no_grad()
def stacked_fbank(model, audio: torch.Tensor, factor: int) -> torch.Tensor:
    """(T', 1, 80 x factor): the preprocessor's frames, `factor` at a time (the last group zero-padded)."""
    feats, feat_len = _features(model, audio)
    n = int(feat_len[0])
    frames = feats[0, :, :n].transpose(0, 1).float().cpu()  # (T, 80)
    t_out = math.ceil(n / factor)
    frames = F.pad(frames, (0, 0, 0, t_out * factor - n))
    return frames.reshape(t_out, 1, factor * frames.shape[1])


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],))


def extract_feature_set(model, splits: Mapping[str, Sequence[Utterance]], name: str, seed: int | None,
                        fbank_factor: int | None = None) -> FeatureSet:
    """Runs every utterance of every split once; `fbank_factor` set: the stacked-fbank baseline instead."""
    out = FeatureSet(model=name, seed=seed)
    for split, utts in splits.items():
        reps = []
        for utt in utts:
            audio = torch.from_numpy(utt.audio)
            rep = stacked_fbank(model, audio, fbank_factor) if fbank_factor else layer_outputs(model, audio)
            if rep.shape[0] == 0:
                raise EvaluationError(f"cut {utt.cut_id!r} ({split}): {utt.duration:.3f} s gives no encoder frame; "
                                      "drop cuts shorter than one frame from the CutSet")
            reps.append(_normalised(rep))
        out.splits[split] = reps
    log.info("extracted %s%s: %d layers x %d dims for %s utterances", name,
             "" if seed is None else f" (seed {seed})", out.num_layers, out.dim,
             "/".join(str(len(v)) for v in out.splits.values()))
    return out
