"""A NESTModel from a checkpoint file: our .ckpt, a .nemo, or a NeMo Lightning .ckpt.

The model package is imported inside the functions: this package sits below it in the layering (nest_ssl.models
does not need checkpoints, but building one from a file needs the model).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import Any, Mapping

import torch

from nest_ssl.checkpoint.format import CheckpointError
from nest_ssl.checkpoint.nemo import check_nest_weights, load_checkpoint_any, model_config_of, read_nemo
from nest_ssl.config import ConfigError


def build_model(model_cfg: Mapping[str, Any], path: str | Path):
    """NESTModel.from_config, with a config that cannot build one reported as the file's problem."""
    from nest_ssl.models import NESTModel

    try:
        return NESTModel.from_config(dict(model_cfg))
    except ConfigError as err:
        raise CheckpointError(f"{path}: cannot build the model from its config: {err}") from err


def load_weights(model: torch.nn.Module, state_dict: Mapping, path: str | Path) -> None:
    """load_state_dict(strict=True), with a mismatch reported as the file's problem rather than a traceback."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes ({first}); the file "
                              "was edited or written for another model") from None


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(NESTModel in eval mode, model config dict) from our .ckpt, a .nemo, or a NeMo Lightning .ckpt."""
    path = Path(path)
    if path.suffix == ".nemo" or (path.is_file() and os.access(path, os.R_OK) and tarfile.is_tarfile(path)):
        model_cfg, state_dict = read_nemo(path)
    else:
        ckpt = load_checkpoint_any(path)
        model_cfg, state_dict = model_config_of(ckpt, path), ckpt["state_dict"]
    check_nest_weights(path, state_dict, ("encoder.",))
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("target", "nemo_version")}
    model = build_model(model_cfg, path)
    load_weights(model, state_dict, path)
    return model.to(device).eval(), model_cfg
