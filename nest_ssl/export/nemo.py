"""NeMo interchange, the user-facing operations (the archive format itself is nest_ssl.checkpoint.nemo).

- export_nemo(ckpt, out): our checkpoint -> .nemo that NeMo 2.7.3's EncDecDenoiseMaskedTokenPredModel.restore_from
  loads (strict) and runs with our outputs.
- export_encoder(ckpt, out): the `encoder.*` weights as a Lightning-style .ckpt, for NeMo's
  `init_from_ptl_ckpt` (or our `init_from_ptl_ckpt`) when a downstream model starts from the pretrained encoder.
- import_nemo(nemo, out): a NeMo NEST .nemo (e.g. ssl_en_nest_large_v1.0, which may carry legacy `decoder_ssl.*`)
  -> our checkpoint, for `init_from_ptl_ckpt=...`, extraction or export.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nest_ssl.checkpoint import LIGHTNING_VERSION, save_checkpoint
from nest_ssl.checkpoint.model import build_model, load_weights
from nest_ssl.checkpoint.nemo import (
    LEGACY_PREFIXES,
    check_nest_weights,
    cpu_state_dict,
    load_checkpoint_any,
    model_config_of,
    plain,
    read_nemo,
    to_nemo_targets,
    write_nemo,
)
from nest_ssl.errors import UserError

log = logging.getLogger(__name__)

NEMO_NEST_CLASSES = ("EncDecDenoiseMaskedTokenPredModel", "EncDecMaskedTokenPredModel")


class ExportError(UserError, RuntimeError):
    """A .nemo archive that cannot be imported as a NEST model; the message names the file."""


def export_nemo(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Our checkpoint (or an imported one, or a .nemo, rewritten in the current layout) -> a .nemo archive for NeMo's
    restore_from."""
    src = Path(ckpt_path)
    ckpt = None if src.suffix == ".nemo" else load_checkpoint_any(src)
    model_cfg, state_dict = read_nemo(src) if ckpt is None else (None, ckpt["state_dict"])
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(LEGACY_PREFIXES)}
    check_nest_weights(src, state_dict)  # a foreign model is named as such before its config is looked for
    if ckpt is not None:
        model_cfg = model_config_of(ckpt, src)
    return write_nemo(out_path, model_cfg, state_dict)


def export_encoder(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """The encoder weights (`encoder.*`, NeMo's names) as a Lightning-style checkpoint for downstream init."""
    src = Path(ckpt_path)
    if src.suffix == ".nemo":
        model_cfg, sd = read_nemo(src)
    else:
        ckpt = load_checkpoint_any(src)
        model_cfg, sd = model_config_of(ckpt, src), ckpt["state_dict"]
    check_nest_weights(src, sd, ("encoder.",))
    enc = {k: v.detach().cpu() for k, v in sd.items() if k.startswith("encoder.")}
    model_cfg = plain(model_cfg)
    sub = {k: model_cfg[k] for k in ("sample_rate", "preprocessor", "encoder") if k in model_cfg}
    out = {
        "state_dict": enc,
        "hyper_parameters": {"cfg": to_nemo_targets(sub)},
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "nest_ssl": {"kind": "encoder"},
    }
    return save_checkpoint(out, out_path)


def import_nemo(nemo_path: str | Path, out_path: str | Path) -> Path:
    """A NeMo NEST .nemo -> our (weights-only) checkpoint; legacy decoder_ssl.* weights are dropped."""
    model_cfg, state_dict = read_nemo(nemo_path)
    target = model_cfg.get("target", "")
    if target and not target.endswith(NEMO_NEST_CLASSES):
        raise ExportError(f"{nemo_path}: model class {target} is not NEST (EncDecDenoiseMaskedTokenPredModel)")
    legacy = [k for k in state_dict if k.startswith(LEGACY_PREFIXES)]
    if legacy:
        log.warning("%s: dropping %d legacy keys of the unused duplicate decoder (decoder_ssl.*)", nemo_path, len(legacy))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(LEGACY_PREFIXES)}
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("target", "nemo_version")}
    check_nest_weights(nemo_path, state_dict)
    # Build the model once: a config or weights we cannot use should fail here, not at training time.
    model = build_model(model_cfg, nemo_path)
    load_weights(model, state_dict, nemo_path)
    ckpt = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": cpu_state_dict(model.state_dict()),
        "hparams_name": "cfg",
        "hyper_parameters": {"cfg": model_cfg},
        "nest_ssl": {"kind": "imported", "source": str(nemo_path), "config": {"model": model_cfg}},
    }
    return save_checkpoint(ckpt, out_path)
