"""Configs: NeMo's yaml (ours or NeMo's own, unchanged), NeMo/Hydra-style overrides, and `_target_` instantiation.

A config is a yaml file in a config folder (default `nest_ssl/conf`, shipped in the package). It may start with a
Hydra-style `defaults:` list naming other configs of the same folder that it extends (`_self_` marks where its own keys go;
last by default), which is how the size variants stay a few lines long.

Overrides follow Hydra's command-line grammar, which NeMo users type every day:
  `a.b=c`     set an existing key (a typo fails and names the nearest valid key)
  `+a.b=c`    add a key that does not exist yet
  `++a.b=c`   set or add
  `~a.b`      delete a key
Values are parsed as yaml (`[x,y]` lists, numbers, `null`, `true`, `${...}` interpolations).
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf._utils import get_yaml_loader

from nest_ssl.errors import UserError

DEFAULT_CONFIG_DIR = Path(__file__).resolve().parent / "conf"  # shipped in the package (pyproject.toml package-data)
DEFAULT_CONFIG_NAME = "nest_fast-conformer"

# Our class for each class NeMo's NEST yaml names. NeMo's configs use short public paths
# (`nemo.collections.asr.modules.X`) but checkpoints written by other NeMo versions may use the defining module's
# path, so any `nemo.*` target is matched on its class name.
OUR_CLASSES = {
    "AudioToMelSpectrogramPreprocessor": "nest_ssl.modules.AudioToMelSpectrogramPreprocessor",
    "SpectrogramAugmentation": "nest_ssl.modules.SpectrogramAugmentation",
    "RandomBlockMasking": "nest_ssl.modules.RandomBlockMasking",
    "RandomProjectionVectorQuantizer": "nest_ssl.modules.RandomProjectionVectorQuantizer",
    "ConformerEncoder": "nest_ssl.modules.ConformerEncoder",
    "MultiSoftmaxDecoder": "nest_ssl.modules.MultiSoftmaxDecoder",
    "MultiMLMLoss": "nest_ssl.modules.MultiMLMLoss",
    "MLMLoss": "nest_ssl.modules.MLMLoss",
    "MultiSpeakerNoiseAugmentation": "nest_ssl.data.augment.MultiSpeakerNoiseAugmentation",
    "EncDecDenoiseMaskedTokenPredModel": "nest_ssl.models.NESTModel",
}
NEMO_TARGETS = {
    "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor": OUR_CLASSES["AudioToMelSpectrogramPreprocessor"],
    "nemo.collections.asr.modules.SpectrogramAugmentation": OUR_CLASSES["SpectrogramAugmentation"],
    "nemo.collections.asr.modules.RandomBlockMasking": OUR_CLASSES["RandomBlockMasking"],
    "nemo.collections.asr.modules.RandomProjectionVectorQuantizer": OUR_CLASSES["RandomProjectionVectorQuantizer"],
    "nemo.collections.asr.modules.ConformerEncoder": OUR_CLASSES["ConformerEncoder"],
    "nemo.collections.asr.modules.MultiSoftmaxDecoder": OUR_CLASSES["MultiSoftmaxDecoder"],
    "nemo.collections.asr.losses.MultiMLMLoss": OUR_CLASSES["MultiMLMLoss"],
    "nemo.collections.asr.modules.ssl_modules.MultiSpeakerNoiseAugmentation": OUR_CLASSES[
        "MultiSpeakerNoiseAugmentation"
    ],
}


class ConfigError(UserError, ValueError):
    """A config file or an override that cannot be used; the message says where and what to do."""


# --------------------------------------------------------------------------------------------------------------
# Loading


def config_file(config_path: str | Path | None, config_name: str) -> Path:
    folder = Path(config_path) if config_path is not None else DEFAULT_CONFIG_DIR
    name = config_name if config_name.endswith((".yaml", ".yml")) else f"{config_name}.yaml"
    path = folder / name
    if not path.is_file():
        choices = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        hint = f"; configs in {folder}: {', '.join(choices)}" if choices else f"; {folder} has no .yaml files"
        raise ConfigError(f"config file {path} does not exist{hint}")
    return path


def _read_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid yaml ({getattr(err, 'problem', err)})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: a config must be a yaml mapping at the top level")
    return cfg


def _compose(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Reads one yaml and merges the configs its `defaults:` list names (Hydra's primary-config semantics)."""
    if path in seen:
        raise ConfigError(f"{path}: `defaults` form a cycle: {' -> '.join(str(p) for p in seen + (path,))}")
    own = _read_yaml(path)
    defaults = own.pop("defaults", None)
    if defaults is None:
        return own
    if not isinstance(defaults, ListConfig):
        raise ConfigError(f"{path}: `defaults` must be a list of config names")
    parts: list[DictConfig] = []
    self_done = False
    for entry in defaults:
        if entry == "_self_":
            parts.append(own)
            self_done = True
        elif isinstance(entry, str):
            parts.append(_compose(config_file(path.parent, entry), seen + (path,)))
        else:
            raise ConfigError(f"{path}: unsupported `defaults` entry {entry!r}; list config names of {path.parent}")
    if not self_done:
        parts.append(own)
    return OmegaConf.merge(*parts)


def load_config(
    config_path: str | Path | None = None,
    config_name: str = DEFAULT_CONFIG_NAME,
    overrides: Iterable[str] = (),
    resolve: bool = True,
) -> DictConfig:
    """Loads `<config_path>/<config_name>.yaml`, applies overrides and resolves `${...}` interpolations."""
    cfg = _compose(config_file(config_path, config_name))
    apply_overrides(cfg, overrides)
    if resolve:
        try:
            OmegaConf.resolve(cfg)
        except Exception as err:  # an interpolation pointing nowhere: say which
            raise ConfigError(f"cannot resolve the config's interpolations: {err}") from None
    return cfg


# --------------------------------------------------------------------------------------------------------------
# Overrides


def parse_value(text: str) -> Any:
    """Parses an override value as yaml, the way OmegaConf reads yaml files (so `1e-3` is a float)."""
    if text == "":
        return ""
    try:
        return yaml.load(text, Loader=get_yaml_loader())
    except yaml.YAMLError:
        return text  # not yaml (e.g. a path with `: ` in it): keep it verbatim


def all_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config, parents included."""
    keys: list[str] = []
    if isinstance(node, DictConfig):
        for k in node.keys():
            full = f"{prefix}.{k}" if prefix else str(k)
            keys.append(full)
            keys.extend(all_keys(node._get_node(k), full))
    return keys


def nearest_key(cfg: DictConfig, key: str) -> str | None:
    candidates = all_keys(cfg)
    parent, _, leaf = key.rpartition(".")
    # A typo usually sits in the leaf: compare against the siblings first, then against every key.
    siblings = [k for k in candidates if k.rpartition(".")[0] == parent]
    for pool, cutoff in ((siblings, 0.6), (candidates, 0.6)):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=cutoff)
        if match:
            return match[0]
    leaf_match = [k for k in candidates if k.rpartition(".")[2] == leaf]
    return leaf_match[0] if leaf_match else None


def _key_exists(cfg: DictConfig, key: str) -> bool:
    node: Any = cfg
    for part in key.split("."):
        # `part in node` is False for a `???` value, which is a key all the same: ask for the node itself.
        if not isinstance(node, DictConfig) or node._get_node(part) is None:
            return False
        node = node._get_node(part)
    return True


def _unknown_key(cfg: DictConfig, key: str, override: str) -> ConfigError:
    near = nearest_key(cfg, key)
    hint = f"; did you mean '{near}'?" if near else ""
    return ConfigError(
        f"override '{override}': key '{key}' is not in the config{hint} "
        f"(to add a new key on purpose, write '+{override}')"
    )


def apply_overrides(cfg: DictConfig, overrides: Iterable[str]) -> DictConfig:
    for override in overrides:
        text = override.strip()
        if not text:
            continue
        if text.startswith("~"):
            key = text[1:].split("=", 1)[0]
            if not _key_exists(cfg, key):
                raise _unknown_key(cfg, key, text)
            parent, _, leaf = key.rpartition(".")
            container = OmegaConf.select(cfg, parent) if parent else cfg
            with _writable(container):
                del container[leaf]
            continue
        if "=" not in text:
            raise ConfigError(f"override '{text}' is not of the form key=value (or +key=value, ++key=value, ~key)")
        key, value = text.split("=", 1)
        mode = "set"
        if key.startswith("++"):
            key, mode = key[2:], "force"
        elif key.startswith("+"):
            key, mode = key[1:], "add"
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{text}': '{key}' is not a valid dotted key")
        exists = _key_exists(cfg, key)
        if mode == "set" and not exists:
            raise _unknown_key(cfg, key, text)
        if mode == "add" and exists:
            raise ConfigError(
                f"override '{text}': key '{key}' already exists (value {OmegaConf.select(cfg, key)!r}); "
                f"drop the '+' to change it"
            )
        with _writable(cfg):
            OmegaConf.update(cfg, key, parse_value(value), merge=False, force_add=True)
    return cfg


class _writable:
    """Temporarily lifts struct mode so that overrides can add keys."""

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def __enter__(self):
        self.flag = OmegaConf.is_struct(self.cfg) if isinstance(self.cfg, DictConfig) else None
        if self.flag:
            OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc):
        if self.flag:
            OmegaConf.set_struct(self.cfg, True)


# --------------------------------------------------------------------------------------------------------------
# Instantiation


def resolve_target(target: str) -> type:
    """Maps a `_target_` (ours, or NeMo's class path) to our class."""
    path = NEMO_TARGETS.get(target, target)
    if path.startswith("nemo."):
        cls_name = path.rpartition(".")[2]
        if cls_name not in OUR_CLASSES:
            known = ", ".join(sorted(OUR_CLASSES))
            raise ConfigError(f"_target_ '{target}' is a NeMo class nest-ssl has no counterpart for; known: {known}")
        path = OUR_CLASSES[cls_name]
    module_name, _, cls_name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"_target_ '{target}' cannot be imported ({err})") from None


def to_plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def instantiate(node: Mapping | DictConfig, **extra_kwargs: Any) -> Any:
    """Builds the object `node._target_` names, passing the node's other keys as keyword arguments."""
    params = dict(to_plain(node))
    target = params.pop("_target_", None)
    if target is None:
        raise ConfigError(f"cannot instantiate a config node without `_target_`: keys {sorted(params)}")
    cls = resolve_target(target)
    params.update(extra_kwargs)
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"{target}: {err}") from err
