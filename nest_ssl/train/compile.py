"""`nest_trainer.compile`: torch.compile of the encoder, with dynamic shapes and padded lengths that bound how
often it recompiles (a trainer option NeMo does not have).

    nest_trainer:
      compile:
        enabled: false        # true: compile model.encoder (in place: state-dict names and checkpoints unchanged)
        dynamic: true         # symbolic batch and time sizes: one graph for many shapes, not one per shape
        pad_to_multiple: 0    # encoder frames (compiled or not); >0 pads every batch's time axis up to a
                              # multiple of this many
                              # frames (zeros past the lengths), so a recompilation is needed for at most
                              # max_duration / (multiple x frame) lengths; 0: no padding
        mode: null            # torch.compile's mode (null: "default"; "max-autotune" on a GPU)

Only the encoder is compiled: it is nearly all of the FLOPs, and the rest of the step (masking, the selection of
the masked tokens, the loss) has data-dependent shapes that would break the graph at every step. The padding
changes nothing but the amount of padding: the features, masks and loss are computed from the lengths, and the
padded frames are masked out as any padding is (tests/test_train_compile.py compares the losses with eager
ones at the same padding).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from nest_ssl.config import ConfigError

__all__ = ["CompileSettings", "compile_encoder", "eager", "pad_batch", "samples_per_encoder_frame"]

log = logging.getLogger(__name__)

MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class CompileSettings:
    """The `nest_trainer.compile` section (module docstring)."""

    enabled: bool = False
    dynamic: bool = True
    pad_to_multiple: int = 0
    mode: Optional[str] = None

    def validate(self, where: str = "nest_trainer.compile") -> None:
        if not isinstance(self.pad_to_multiple, int) or self.pad_to_multiple < 0:
            raise ConfigError(f"{where}.pad_to_multiple={self.pad_to_multiple!r}: a number of encoder frames >= 0 "
                              "(0: no padding)")
        if self.mode not in MODES:
            raise ConfigError(f"{where}.mode={self.mode!r}: one of {', '.join(str(m) for m in MODES)}")


def samples_per_encoder_frame(model_cfg: Any) -> int:
    """Audio samples per encoder frame: sample rate x feature hop x subsampling factor (1280 for NEST at 16 kHz)."""
    sr = int(model_cfg.get("sample_rate", 16000))
    hop = float(model_cfg.preprocessor.get("window_stride", 0.01))
    factor = int(model_cfg.encoder.get("subsampling_factor", 1))
    return int(round(sr * hop)) * factor


def compile_encoder(model: torch.nn.Module, settings: CompileSettings) -> None:
    """Compiles model.encoder in place (nn.Module.compile: the module and its parameter names stay)."""
    kwargs = {"dynamic": settings.dynamic}
    if settings.mode not in (None, "default"):
        kwargs["mode"] = settings.mode
    for layer in model.encoder.layers:
        layer.compile(**kwargs)
    log.info("torch.compile: the %d Conformer layers of model.encoder (dynamic=%s, mode=%s)",
             len(model.encoder.layers), settings.dynamic, settings.mode or "default")


@contextlib.contextmanager
def eager(model: torch.nn.Module):
    """Runs the compiled layers eagerly inside the block (the FLOP counter's pass: a dispatch mode around compiled
    code would recompile it). nn.Module.compile keeps the compiled callable in `_compiled_call_impl`."""
    saved = [(layer, layer._compiled_call_impl) for layer in model.encoder.layers
             if getattr(layer, "_compiled_call_impl", None) is not None]
    for layer, _ in saved:
        layer._compiled_call_impl = None
    try:
        yield
    finally:
        for layer, impl in saved:
            layer._compiled_call_impl = impl


def pad_batch(batch: Any, multiple_samples: int) -> Any:
    """A shallow copy of `batch` whose audio and noisy_audio are zero-padded on the time axis up to a multiple of
    `multiple_samples` (lengths unchanged); `batch` itself when it already is, or when the multiple is 0."""
    if multiple_samples <= 0 or batch.audio is None or batch.audio.dim() != 2:
        return batch
    n = batch.audio.shape[1]
    target = max(1, math.ceil(n / multiple_samples)) * multiple_samples
    if target == n:
        return batch
    out = copy.copy(batch)
    out.audio = F.pad(batch.audio, (0, target - n))
    if getattr(batch, "noisy_audio", None) is not None:
        out.noisy_audio = F.pad(batch.noisy_audio, (0, target - n))
    if getattr(batch, "noise", None) is not None and batch.noise.dim() == 2:
        out.noise = F.pad(batch.noise, (0, target - n))
    return out
