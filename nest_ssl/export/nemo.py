"""NeMo interchange: .nemo archives and Lightning checkpoints in both directions.

A .nemo file (NeMo's SaveRestoreConnector) is an uncompressed tar (older ones gzip) holding `model_config.yaml`
(the `model:` section, with `target` naming the model class and `nemo_version`) and `model_weights.ckpt` (a
torch-saved state dict). Our state-dict keys are NeMo's, so the weights go across unchanged; the config only needs
its `_target_`s pointed at NeMo's classes (and back, which nest_ssl.config does on load).

- export_nemo(ckpt, out): our checkpoint -> .nemo that NeMo 2.7.3's EncDecDenoiseMaskedTokenPredModel.restore_from
  loads (strict) and runs with our outputs.
- export_encoder(ckpt, out): the `encoder.*` weights as a Lightning-style .ckpt, for NeMo's
  `init_from_ptl_ckpt` (or our `init_from_ptl_ckpt`) when a downstream model starts from the pretrained encoder.
- import_nemo(nemo, out): a NeMo NEST .nemo (e.g. ssl_en_nest_large_v1.0, which may carry legacy `decoder_ssl.*`)
  -> our checkpoint, for `init_from_ptl_ckpt=...`, extraction or export.
- load_model(path): a NESTModel from any of: our .ckpt, a .nemo, a NeMo Lightning .ckpt.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from nest_ssl.config import NEMO_TARGETS, OUR_CLASSES, ConfigError
from nest_ssl.errors import UserError, describe_os_error

log = logging.getLogger(__name__)

NEMO_MODEL_TARGET = "nemo.collections.asr.models.ssl_models.EncDecDenoiseMaskedTokenPredModel"
NEMO_VERSION = "2.7.3"
MODEL_CONFIG_YAML = "model_config.yaml"
MODEL_WEIGHTS_CKPT = "model_weights.ckpt"
LEGACY_PREFIXES = ("decoder_ssl.",)

# Our class path -> NeMo's public class path (the inverse of nest_ssl.config.NEMO_TARGETS, plus classes NeMo's
# NEST yaml does not name but whose NeMo home is known).
_OURS_TO_NEMO = {ours: nemo for nemo, ours in NEMO_TARGETS.items()}
_OURS_TO_NEMO.setdefault(OUR_CLASSES["MLMLoss"], "nemo.collections.asr.losses.MLMLoss")


class ExportError(UserError, RuntimeError):
    """A checkpoint or .nemo archive that cannot be exported, imported or loaded; the message names the file."""


def _plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def to_nemo_targets(node: Any) -> Any:
    """A copy of a config in which every `_target_` names NeMo's class."""
    node = _plain(node)
    if isinstance(node, Mapping):
        out = {}
        for k, v in node.items():
            if k == "_target_" and isinstance(v, str):
                if v.startswith("nemo."):
                    out[k] = v
                elif v in _OURS_TO_NEMO:
                    out[k] = _OURS_TO_NEMO[v]
                else:
                    raise ExportError(f"_target_ {v!r} has no NeMo counterpart; NeMo could not build this model")
            else:
                out[k] = to_nemo_targets(v)
        return out
    if isinstance(node, list):
        return [to_nemo_targets(v) for v in node]
    return node


def nemo_model_config(model_cfg: Any) -> dict:
    """The `model_config.yaml` content for a `model:` section of our config."""
    cfg = to_nemo_targets(model_cfg)
    # Our training-only encoder key (activation checkpointing): NeMo's ConformerEncoder would refuse it.
    if isinstance(cfg.get("encoder"), dict):
        cfg["encoder"].pop("activation_checkpointing", None)
    cfg.pop("target", None)
    cfg.pop("nemo_version", None)
    # NeMo's ModelPT adds these two keys itself; restore_from reads `target` to pick the class.
    cfg["target"] = NEMO_MODEL_TARGET
    cfg["nemo_version"] = NEMO_VERSION
    return cfg


def _cpu_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    return {k: v.detach().cpu() for k, v in state_dict.items()}


def write_nemo(path: str | Path, model_cfg: Any, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """Writes a .nemo archive atomically (NeMo's layout: `./model_config.yaml`, `./model_weights.ckpt`)."""
    from nest_ssl.train.checkpoint import atomic_write

    cfg_bytes = yaml.safe_dump(nemo_model_config(model_cfg), sort_keys=False).encode()
    buf = io.BytesIO()
    torch.save(_cpu_state_dict(state_dict), buf)
    weights = buf.getvalue()

    def write(tmp: str) -> None:
        with tarfile.open(tmp, "w:") as tar:
            now = time.time()
            for name, data in ((MODEL_CONFIG_YAML, cfg_bytes), (MODEL_WEIGHTS_CKPT, weights)):
                info = tarfile.TarInfo(f"./{name}")
                info.size = len(data)
                info.mtime = now
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))

    return atomic_write(path, write)


def _tar_open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except tarfile.ReadError:
        return tarfile.open(path, "r:gz")  # .nemo files written before NeMo 1.7 are gzipped


def _member(tar: tarfile.TarFile, name: str) -> tarfile.TarInfo | None:
    for m in tar.getmembers():
        if m.isfile() and os.path.basename(m.name) == name:
            return m
    return None


def read_nemo(path: str | Path) -> tuple[dict, dict]:
    """(model config, state dict) of a .nemo archive; nothing is extracted to disk."""
    from nest_ssl.train.checkpoint import check_checkpoint_file

    path = check_checkpoint_file(path, "nemo file")
    try:
        tar = _tar_open(path)
    except OSError as err:
        raise ExportError(f"{path}: cannot be read: {describe_os_error(err)}") from None
    except tarfile.TarError:
        raise ExportError(f"{path}: not a .nemo archive (neither a tar nor a gzipped tar file); give a .nemo "
                          "written by NeMo or `nest-ssl export`") from None
    with tar:
        cfg_m = _member(tar, MODEL_CONFIG_YAML)
        w_m = _member(tar, MODEL_WEIGHTS_CKPT)
        if cfg_m is None or w_m is None:
            names = ", ".join(m.name for m in tar.getmembers()[:10])
            raise ExportError(
                f"{path}: a .nemo archive holds {MODEL_CONFIG_YAML} and {MODEL_WEIGHTS_CKPT}; found {names} "
                "(model-parallel or distributed checkpoints are not supported)"
            )
        try:
            cfg = yaml.safe_load(tar.extractfile(cfg_m).read())
            data = tar.extractfile(w_m).read()
        except (tarfile.TarError, EOFError, OSError, yaml.YAMLError) as err:
            raise ExportError(f"{path}: the archive is damaged or truncated ({type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}); download or export it again") from None
    if not isinstance(cfg, dict):
        raise ExportError(f"{path}: {MODEL_CONFIG_YAML} is not a yaml mapping; not a NeMo model archive")
    try:
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ExportError(f"{path}: {MODEL_WEIGHTS_CKPT} cannot be read ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200] if str(err) else ''}); download or export it again") from None
    if not isinstance(state_dict, dict):
        raise ExportError(f"{path}: {MODEL_WEIGHTS_CKPT} holds {type(state_dict).__name__}, not a state dict")
    if "model" in cfg and isinstance(cfg["model"], dict):
        cfg = cfg["model"]
    return cfg, state_dict


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def _model_config_of(ckpt: Mapping, path: str | Path = "the checkpoint") -> dict:
    """The `model:` section stored in a checkpoint (ours: nest_ssl.config; Lightning/NeMo: hyper_parameters.cfg)."""
    nest = ckpt.get("nest_ssl") or {}
    cfg = nest.get("config")
    if isinstance(cfg, Mapping) and "model" in cfg:
        return dict(cfg["model"])
    hp = ckpt.get("hyper_parameters") or {}
    cfg = hp.get("cfg") if isinstance(hp, Mapping) else None
    if cfg is not None:
        return _plain(cfg)
    raise ExportError(f"{path}: stores no model config (neither nest_ssl.config nor hyper_parameters.cfg); give a "
                      "checkpoint written by `nest-ssl train`, `nest-ssl import-nemo` or NeMo")


NEST_PARTS = ("encoder.", "decoder.", "quantizer.")  # state-dict prefixes every NEST model has


def check_nest_weights(path: str | Path, state_dict: Mapping, needed: tuple[str, ...] = NEST_PARTS) -> None:
    """A foreign checkpoint (an ASR model, another toolkit's file) fails here, naming what it holds instead."""
    missing = [p.rstrip(".") for p in needed if not any(str(k).startswith(p) for k in state_dict)]
    if missing:
        held = sorted({str(k).split(".")[0] for k in state_dict})[:8]
        raise ExportError(f"{path}: not a NEST model: no {', '.join(missing)} weights (it holds: {', '.join(held) or 'nothing'}); "
                          "give a checkpoint written by `nest-ssl train` or `nest-ssl import-nemo`")


def _load_weights(model: torch.nn.Module, state_dict: Mapping, path: str | Path) -> None:
    """load_state_dict(strict=True), with a mismatch reported as the file's problem rather than a traceback."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:300]
        raise ExportError(f"{path}: its weights do not fit the model its config describes ({first}); the file was "
                          "edited or written for another model") from None


def load_checkpoint_any(path: str | Path) -> dict:
    """Our checkpoint (verified) or another tool's Lightning checkpoint."""
    from nest_ssl.train.checkpoint import PickledCheckpointError, check_checkpoint_file, load_checkpoint

    path = check_checkpoint_file(path)
    try:
        return load_checkpoint(path)
    except PickledCheckpointError:
        # NeMo's own Lightning checkpoints pickle OmegaConf objects, which weights_only loading refuses.
        log.warning("%s holds pickled objects (a NeMo/Lightning checkpoint); loading it with weights_only=False "
                    "- only do this with files you trust", path)
        return torch.load(str(path), map_location="cpu", weights_only=False)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(NESTModel in eval mode, model config dict) from our .ckpt, a .nemo, or a NeMo Lightning .ckpt."""
    from nest_ssl.models import NESTModel

    path = Path(path)
    if path.suffix == ".nemo" or (path.is_file() and os.access(path, os.R_OK) and tarfile.is_tarfile(path)):
        model_cfg, state_dict = read_nemo(path)
    else:
        ckpt = load_checkpoint_any(path)
        model_cfg, state_dict = _model_config_of(ckpt, path), ckpt["state_dict"]
    check_nest_weights(path, state_dict, ("encoder.",))
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("target", "nemo_version")}
    try:
        model = NESTModel.from_config(model_cfg)
    except ConfigError as err:
        raise ExportError(f"{path}: cannot build the model from its config: {err}") from err
    _load_weights(model, state_dict, path)
    return model.to(device).eval(), model_cfg


def export_nemo(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Our checkpoint (or an imported one, or a .nemo, rewritten in the current layout) -> a .nemo archive for NeMo's
    restore_from."""
    src = Path(ckpt_path)
    ckpt = None if src.suffix == ".nemo" else load_checkpoint_any(src)
    model_cfg, state_dict = read_nemo(src) if ckpt is None else (None, ckpt["state_dict"])
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(LEGACY_PREFIXES)}
    check_nest_weights(src, state_dict)  # a foreign model is named as such before its config is looked for
    if ckpt is not None:
        model_cfg = _model_config_of(ckpt, src)
    return write_nemo(out_path, model_cfg, state_dict)


def export_encoder(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """The encoder weights (`encoder.*`, NeMo's names) as a Lightning-style checkpoint for downstream init."""
    from nest_ssl.train.checkpoint import save_checkpoint

    src = Path(ckpt_path)
    if src.suffix == ".nemo":
        model_cfg, sd = read_nemo(src)
    else:
        ckpt = load_checkpoint_any(src)
        model_cfg, sd = _model_config_of(ckpt, src), ckpt["state_dict"]
    check_nest_weights(src, sd, ("encoder.",))
    enc = {k: v.detach().cpu() for k, v in sd.items() if k.startswith("encoder.")}
    model_cfg = _plain(model_cfg)
    sub = {k: model_cfg[k] for k in ("sample_rate", "preprocessor", "encoder") if k in model_cfg}
    out = {
        "state_dict": enc,
        "hyper_parameters": {"cfg": to_nemo_targets(sub)},
        "pytorch-lightning_version": "2.4.0",
        "nest_ssl": {"kind": "encoder"},
    }
    return save_checkpoint(out, out_path)


def import_nemo(nemo_path: str | Path, out_path: str | Path) -> Path:
    """A NeMo NEST .nemo -> our (weights-only) checkpoint; legacy decoder_ssl.* weights are dropped."""
    from nest_ssl.models import NESTModel
    from nest_ssl.train.checkpoint import save_checkpoint

    model_cfg, state_dict = read_nemo(nemo_path)
    target = model_cfg.get("target", "")
    if target and not target.endswith(("EncDecDenoiseMaskedTokenPredModel", "EncDecMaskedTokenPredModel")):
        raise ExportError(f"{nemo_path}: model class {target} is not NEST (EncDecDenoiseMaskedTokenPredModel)")
    legacy = [k for k in state_dict if k.startswith(LEGACY_PREFIXES)]
    if legacy:
        log.warning("%s: dropping %d legacy keys of the unused duplicate decoder (decoder_ssl.*)", nemo_path, len(legacy))
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(LEGACY_PREFIXES)}
    model_cfg = {k: v for k, v in model_cfg.items() if k not in ("target", "nemo_version")}
    check_nest_weights(nemo_path, state_dict)
    # Build the model once: a config or weights we cannot use should fail here, not at training time.
    try:
        model = NESTModel.from_config(model_cfg)
    except ConfigError as err:
        raise ExportError(f"{nemo_path}: cannot build the model from its config: {err}") from err
    _load_weights(model, state_dict, nemo_path)
    ckpt = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": _cpu_state_dict(model.state_dict()),
        "hparams_name": "cfg",
        "hyper_parameters": {"cfg": model_cfg},
        "nest_ssl": {"kind": "imported", "source": str(nemo_path), "config": {"model": model_cfg}},
    }
    return save_checkpoint(ckpt, out_path)
