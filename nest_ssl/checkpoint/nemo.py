""".nemo archives (NeMo's SaveRestoreConnector layout) and reading any checkpoint, ours or another tool's.

A .nemo file is an uncompressed tar (older ones gzip) holding `model_config.yaml` (the `model:` section, with
`target` naming the model class and `nemo_version`) and `model_weights.ckpt` (a torch-saved state dict). Our
state-dict keys are NeMo's, so the weights go across unchanged; the config only needs its `_target_`s pointed at
NeMo's classes (and back, which nest_ssl.config does on load).

- write_nemo / read_nemo: the archive itself, written atomically, read without extracting to disk.
- load_checkpoint_any: our .ckpt (verified) or a NeMo/Lightning one (pickled objects).
- model_config_of / check_nest_weights: what a checkpoint holds, told apart from a foreign one.
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

from nest_ssl.checkpoint.format import (
    CheckpointError,
    PickledCheckpointError,
    atomic_write,
    check_checkpoint_file,
    load_checkpoint,
    torch_save,
)
from nest_ssl.config import NEMO_TARGETS, OUR_CLASSES
from nest_ssl.errors import describe_os_error

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



def plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def to_nemo_targets(node: Any) -> Any:
    """A copy of a config in which every `_target_` names NeMo's class."""
    node = plain(node)
    if isinstance(node, Mapping):
        out = {}
        for k, v in node.items():
            if k == "_target_" and isinstance(v, str):
                if v.startswith("nemo."):
                    out[k] = v
                elif v in _OURS_TO_NEMO:
                    out[k] = _OURS_TO_NEMO[v]
                else:
                    raise CheckpointError(f"_target_ {v!r} has no NeMo counterpart; NeMo could not build this model")
            else:
                out[k] = to_nemo_targets(v)
        return out
    if isinstance(node, list):
        return [to_nemo_targets(v) for v in node]
    return node


def nemo_model_config(model_cfg: Any, target: str = NEMO_MODEL_TARGET) -> dict:
    """The `model_config.yaml` content for a `model:` section of our config; `target` is NeMo's model class."""
    cfg = to_nemo_targets(model_cfg)
    # Our training-only encoder key (activation checkpointing): NeMo's ConformerEncoder would refuse it.
    if isinstance(cfg.get("encoder"), dict):
        cfg["encoder"].pop("activation_checkpointing", None)
    cfg.pop("target", None)
    cfg.pop("nemo_version", None)
    # NeMo's ModelPT adds these two keys itself; restore_from reads `target` to pick the class.
    cfg["target"] = target
    cfg["nemo_version"] = NEMO_VERSION
    return cfg


def cpu_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    return {k: v.detach().cpu() for k, v in state_dict.items()}


def write_nemo(path: str | Path, model_cfg: Any, state_dict: Mapping[str, torch.Tensor],
               target: str = NEMO_MODEL_TARGET, artifacts: Mapping[str, bytes] | None = None) -> Path:
    """Writes a .nemo archive atomically (NeMo's layout: `./model_config.yaml`, `./model_weights.ckpt`, and the
    `artifacts` beside them: files the config names as `nemo:NAME`, e.g. an ASR model's tokenizer)."""
    cfg_bytes = yaml.safe_dump(nemo_model_config(model_cfg, target), sort_keys=False, allow_unicode=True).encode()
    extra = dict(artifacts or {})
    clash = [n for n in extra if n in (MODEL_CONFIG_YAML, MODEL_WEIGHTS_CKPT) or "/" in n or not n]
    if clash:
        raise ValueError(f"artifact names must be plain file names other than the config and weights: {clash}")

    def write(tmp: str) -> None:
        # The weights go through a file beside the archive (a temporary name that cleanup_temporaries knows), so
        # that the serialized weights are never held in memory as a whole.
        weights = tmp + ".weights"
        try:
            torch_save(cpu_state_dict(state_dict), weights)
            now = time.time()
            with tarfile.open(tmp, "w:") as tar, open(weights, "rb") as f:
                members = [(MODEL_CONFIG_YAML, len(cfg_bytes), io.BytesIO(cfg_bytes)),
                           (MODEL_WEIGHTS_CKPT, os.path.getsize(weights), f)]
                members += [(name, len(blob), io.BytesIO(blob)) for name, blob in sorted(extra.items())]
                for name, size, fileobj in members:
                    info = tarfile.TarInfo(f"./{name}")
                    info.size = size
                    info.mtime = now
                    info.mode = 0o644
                    tar.addfile(info, fileobj)
        finally:
            try:
                os.unlink(weights)
            except FileNotFoundError:
                pass

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
    path = check_checkpoint_file(path, "nemo file")
    try:
        tar = _tar_open(path)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read: {describe_os_error(err)}") from None
    except tarfile.TarError:
        raise CheckpointError(f"{path}: not a .nemo archive (neither a tar nor a gzipped tar file); give a .nemo "
                              "written by NeMo or `nest-ssl export`") from None
    with tar:
        cfg_m = _member(tar, MODEL_CONFIG_YAML)
        w_m = _member(tar, MODEL_WEIGHTS_CKPT)
        if cfg_m is None or w_m is None:
            names = ", ".join(m.name for m in tar.getmembers()[:10])
            raise CheckpointError(
                f"{path}: a .nemo archive holds {MODEL_CONFIG_YAML} and {MODEL_WEIGHTS_CKPT}; found {names} "
                "(model-parallel or distributed checkpoints are not supported)"
            )
        try:
            cfg = yaml.safe_load(tar.extractfile(cfg_m).read())
            data = tar.extractfile(w_m).read()
        except (tarfile.TarError, EOFError, OSError, yaml.YAMLError) as err:
            raise CheckpointError(f"{path}: the archive is damaged or truncated ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0] if str(err) else ''}); download or export it again") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: {MODEL_CONFIG_YAML} is not a yaml mapping; not a NeMo model archive")
    try:
        state_dict = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: {MODEL_WEIGHTS_CKPT} cannot be read ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200] if str(err) else ''}); download or export it again") from None
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: {MODEL_WEIGHTS_CKPT} holds {type(state_dict).__name__}, not a state dict")
    if "model" in cfg and isinstance(cfg["model"], dict):
        cfg = cfg["model"]
    return cfg, state_dict


def read_nemo_files(path: str | Path, names: list[str]) -> dict[str, bytes]:
    """The archive members `names` (matched by file name, wherever they sit in the tar) of a .nemo file; a name
    given as NeMo's config writes it (`nemo:NAME`) is looked up as NAME. Missing members: a CheckpointError."""
    path = check_checkpoint_file(path, "nemo file")
    wanted = {n: os.path.basename(n[5:] if n.startswith("nemo:") else n) for n in names}
    out: dict[str, bytes] = {}
    try:
        with _tar_open(path) as tar:
            for name, base in wanted.items():
                m = _member(tar, base)
                if m is None:
                    raise CheckpointError(f"{path}: the archive has no {base} (its config names {name}); the file is "
                                          "incomplete: export or save it again")
                out[name] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError) as err:
        raise CheckpointError(f"{path}: the archive is damaged or truncated ({type(err).__name__}); download or "
                              "export it again") from None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read: {describe_os_error(err)}") from None
    return out


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def model_config_of(ckpt: Mapping, path: str | Path = "the checkpoint") -> dict:
    """The `model:` section stored in a checkpoint (ours: nest_ssl.config; Lightning/NeMo: hyper_parameters.cfg)."""
    nest = ckpt.get("nest_ssl") or {}
    cfg = nest.get("config")
    if isinstance(cfg, Mapping) and "model" in cfg:
        return dict(cfg["model"])
    hp = ckpt.get("hyper_parameters") or {}
    cfg = hp.get("cfg") if isinstance(hp, Mapping) else None
    if cfg is not None:
        return plain(cfg)
    raise CheckpointError(f"{path}: stores no model config (neither nest_ssl.config nor hyper_parameters.cfg); give a "
                          "checkpoint written by `nest-ssl train`, `nest-ssl import-nemo` or NeMo")


NEST_PARTS = ("encoder.", "decoder.", "quantizer.")  # state-dict prefixes every NEST model has


def check_nest_weights(path: str | Path, state_dict: Mapping, needed: tuple[str, ...] = NEST_PARTS) -> None:
    """A foreign checkpoint (an ASR model, another toolkit's file) fails here, naming what it holds instead."""
    missing = [p.rstrip(".") for p in needed if not any(str(k).startswith(p) for k in state_dict)]
    if missing:
        held = sorted({str(k).split(".")[0] for k in state_dict})[:8]
        raise CheckpointError(f"{path}: not a NEST model: no {', '.join(missing)} weights (it holds: {', '.join(held) or 'nothing'}); "
                              "give a checkpoint written by `nest-ssl train` or `nest-ssl import-nemo`")


def load_checkpoint_any(path: str | Path) -> dict:
    """Our checkpoint (verified) or another tool's Lightning checkpoint."""
    path = check_checkpoint_file(path)
    try:
        return load_checkpoint(path)
    except PickledCheckpointError:
        # NeMo's own Lightning checkpoints pickle OmegaConf objects, which weights_only loading refuses.
        log.warning("%s holds pickled objects (a NeMo/Lightning checkpoint); loading it with weights_only=False "
                    "- only do this with files you trust", path)
        return torch.load(str(path), map_location="cpu", weights_only=False)
