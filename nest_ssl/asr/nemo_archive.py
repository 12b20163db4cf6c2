"""NeMo 2.7.3 ASR `.nemo` archives: the parts every recognizer head shares (the heads: CTC in .nemo_ctc,
RNN-T in .nemo_rnnt).

Writing: the config NeMo's ASR models read (the keys of NeMo's `fast-conformer_ctc_bpe.yaml`: `train_ds`,
`validation_ds`, `test_ds` stubs with `manifest_filepath: null`, `preprocessor`, `spec_augment`, `encoder` with
NeMo's `_target_`s, `optim`), and the tokenizer as NeMo keeps it inside an archive: for SentencePiece a `tokenizer:`
section (`type: bpe`, NeMo's name for every SentencePiece model) whose `model_path`, `vocab_path` and
`spe_tokenizer_vocab` are `nemo:NAME` artifacts, files stored beside `model_config.yaml` (NeMo names them
`<32 hex>_tokenizer.model`; here the hex is the file's digest, so that an export is reproducible). A character
model has no tokenizer section: its labels are the head's vocabulary, which the head module writes.

Reading: a NeMo ASR archive (made by NeMo or by us) is checked for what nest-ssl can run (the Conformer encoder,
NeMo's mel preprocessor, no adapters) before anything is built; what it cannot run is one line naming the key.
`nemo_head` tells a CTC archive from an RNN-T one by its config alone, and `asr_from_nemo`, `sections_from_nemo`,
`tokenizer_of_asr_nemo` hand the archive to its head's reader (.nemo_ctc, .nemo_rnnt).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from nest_ssl.asr.errors import ASRError

log = logging.getLogger(__name__)

NEMO_MODELS = "nemo.collections.asr.models"
NEMO_MODULES = "nemo.collections.asr.modules"
CTC_CLASSES = ("EncDecCTCModelBPE", "EncDecCTCModel")
RNNT_CLASSES = ("EncDecRNNTBPEModel", "EncDecRNNTModel")
ASR_CLASSES = CTC_CLASSES + RNNT_CLASSES
SUPPORTED_SECTIONS = {"preprocessor": "AudioToMelSpectrogramPreprocessor", "encoder": "ConformerEncoder"}
# NeMo's tokenizer config key -> the file of a SentencePiece tokenizer folder it names
SP_ARTIFACTS = {"model_path": "tokenizer.model", "vocab_path": "vocab.txt", "spe_tokenizer_vocab": "tokenizer.vocab"}
# spec_augment keys nest-ssl's SpecAugment lacks; training-only, so an imported model decodes without them
_UNIMPLEMENTED_SPEC_AUGMENT = ("rect_masks", "rect_time", "rect_freq")

# NeMo's fast-conformer_ctc_bpe.yaml values for what a NeMo user would continue training with
NEMO_OPTIM = {"name": "adamw", "lr": 1e-3, "betas": [0.9, 0.98], "weight_decay": 1e-3,
              "sched": {"name": "CosineAnnealing", "warmup_steps": 15000, "warmup_ratio": None, "min_lr": 1e-4}}


# --------------------------------------------------------------------------------------------------------------
# Writing


def artifact_name(base: str, blob: bytes) -> str:
    """NeMo's artifact naming (`<32 hex>_<file name>`), the hex being the content's digest."""
    return f"{hashlib.sha256(blob).hexdigest()[:32]}_{base}"


def tokenizer_section(tok) -> tuple[dict | None, dict[str, bytes]]:
    """(NeMo's `tokenizer:` section, the artifact files it names) for a SentencePiece tokenizer; (None, {}) for
    characters, whose labels go into the head's vocabulary instead."""
    if tok.kind == "char":
        return None, {}
    with tempfile.TemporaryDirectory(prefix="nest_ssl_tok_") as tmp:
        tok.save(Path(tmp))
        files = {base: (Path(tmp) / base).read_bytes() for base in SP_ARTIFACTS.values()}
    section: dict[str, Any] = {"dir": None, "type": "bpe"}
    artifacts = {}
    for key, base in SP_ARTIFACTS.items():
        name = artifact_name(base, files[base])
        section[key] = f"nemo:{name}"
        artifacts[name] = files[base]
    return section, artifacts


def data_stubs(sample_rate: int, labels: list[str] | None = None) -> dict:
    """`train_ds`, `validation_ds`, `test_ds` as in NeMo's yaml with no data (`manifest_filepath: null`): NeMo's
    transcribe() reads `validation_ds.use_start_end_token`, and a user fine-tuning in NeMo fills in the paths."""
    common = {"manifest_filepath": None, "sample_rate": sample_rate, "batch_size": 16, "num_workers": 8,
              "pin_memory": True}
    if labels is not None:
        common["labels"] = list(labels)
    return {
        "train_ds": {**common, "shuffle": True, "max_duration": 16.7, "min_duration": 0.1, "is_tarred": False,
                     "tarred_audio_filepaths": None, "shuffle_n": 2048, "bucketing_strategy": "fully_randomized",
                     "bucketing_batch_size": None},
        "validation_ds": {**common, "shuffle": False, "use_start_end_token": False},
        "test_ds": {**common, "shuffle": False, "use_start_end_token": False},
    }


def base_config(model_cfg: Mapping[str, Any], labels: list[str] | None = None) -> dict:
    """The head-independent part of an ASR model_config.yaml from our model config: data stubs, preprocessor,
    spec_augment, encoder, optim. `_target_`s are turned into NeMo's when the archive is written."""
    cfg = copy.deepcopy(dict(model_cfg))
    sample_rate = int(cfg.get("sample_rate") or cfg["preprocessor"].get("sample_rate", 16000))
    # NeMo's keys written out (the defaults of both SpectrogramAugmentation and ours: no masking)
    spec = {"_target_": f"{NEMO_MODULES}.SpectrogramAugmentation", "freq_masks": 0, "time_masks": 0,
            "freq_width": 10, "time_width": 10,
            **{k: v for k, v in (cfg.get("spec_augment") or {}).items() if k != "_target_"}}
    out = {"sample_rate": sample_rate, "log_prediction": True, "skip_nan_grad": False,
           **data_stubs(sample_rate, labels)}
    if labels is not None:
        out["labels"] = list(labels)
    out.update({"preprocessor": cfg["preprocessor"], "spec_augment": spec, "encoder": cfg["encoder"],
                "optim": copy.deepcopy(NEMO_OPTIM)})
    return out


def head_config(model, tok, head: str) -> tuple[dict, list[str], dict[str, bytes]]:
    """What every head's export opens with: the tokenizer checked against the head's size (its blank is the last
    class), then base_config with the tokenizer as NeMo keeps it. Returns (the config so far, the head's vocabulary
    in id order, the artifacts); a character model has its characters (the space too) as `labels` and no
    `tokenizer:` section, a SentencePiece model the section and no `labels`."""
    if tok.vocab_size != model.blank:
        raise ASRError(f"the tokenizer has {tok.vocab_size} tokens but the model's {head} head has {model.blank}; "
                       "give the tokenizer the model was fine-tuned with")
    section, artifacts = tokenizer_section(tok)
    if section is None:
        vocabulary = list(tok.characters)
        return base_config(model.cfg, vocabulary), vocabulary, artifacts
    cfg = base_config(model.cfg)
    cfg["tokenizer"] = section
    # NeMo rebuilds the head's vocabulary from the tokenizer on restore (its pieces in id order): written the same
    return cfg, tok.tokens(), artifacts


def write_asr_nemo(out_path: str | Path, cfg: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                   target: str, artifacts: Mapping[str, bytes]) -> Path:
    """The archive, written atomically through the NEST export's writer (nest_ssl.checkpoint.nemo)."""
    from nest_ssl.checkpoint.nemo import write_nemo

    return write_nemo(out_path, cfg, {k: v.detach().cpu() for k, v in state_dict.items()}, target=target,
                      artifacts=artifacts)


# --------------------------------------------------------------------------------------------------------------
# Reading


@dataclass
class NemoASR:
    path: Path
    cfg: dict  # model_config.yaml's model section
    state_dict: dict
    model_class: str  # the class name of `target` ("" when the archive names none)


def is_nemo_archive(path: str | Path) -> bool:
    import os
    import tarfile

    p = Path(path)
    return p.is_file() and (p.suffix == ".nemo" or (os.access(p, os.R_OK) and tarfile.is_tarfile(p)))


def read_asr_nemo(path: str | Path, what: str = "model") -> NemoASR:
    """A .nemo archive's config and weights (nothing extracted to disk); reading errors name `what` and the file."""
    from nest_ssl.checkpoint.nemo import read_nemo
    from nest_ssl.errors import UserError

    path = Path(path)
    try:
        cfg, state_dict = read_nemo(path)
    except UserError as err:
        msg = str(err)
        raise ASRError(f"{what} {msg}" if msg.startswith(str(path)) else f"{what} {path}: {msg}") from None
    target = str(cfg.get("target") or "")
    return NemoASR(path, resolved(cfg), state_dict, target.rpartition(".")[2])


def resolved(cfg: dict) -> dict:
    """The model section with its `${model.x}` / `${x}` interpolations resolved (a hand-written or older config may
    keep them); left as it is where they do not resolve."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        root = OmegaConf.create({"model": cfg, **cfg})
        return OmegaConf.to_container(root, resolve=True)["model"]
    except (OmegaConfBaseException, ValueError, TypeError):
        return cfg


def read_config_only(path: Path) -> dict:
    """The model section of an archive's model_config.yaml, the weights not read; {} when it cannot be read (the
    reader that follows reports what is wrong with the file)."""
    import yaml

    from nest_ssl.checkpoint.nemo import MODEL_CONFIG_YAML, read_nemo_files
    from nest_ssl.errors import UserError

    try:
        cfg = yaml.safe_load(read_nemo_files(Path(path), [MODEL_CONFIG_YAML])[MODEL_CONFIG_YAML])
    except (UserError, yaml.YAMLError):
        return {}
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        cfg = cfg["model"]
    return cfg if isinstance(cfg, dict) else {}


def nemo_head(path: str | Path) -> str | None:
    """"ctc" or "rnnt" for a NeMo ASR archive (by its `target`, else its head sections; a hybrid RNN-T + CTC model
    counts as RNN-T, whose reader refuses it by name), None for anything else (a NEST model, not an archive)."""
    if not is_nemo_archive(path):
        return None
    cfg = read_config_only(Path(path))
    cls = str(cfg.get("target") or "").rpartition(".")[2]
    if cls:
        return "ctc" if cls in CTC_CLASSES else "rnnt" if "RNNT" in cls else None
    if isinstance(cfg.get("joint"), Mapping):
        return "rnnt"
    return "ctc" if class_of(cfg.get("decoder")) == "ConvASRDecoder" else None


def _reader(path: str | Path):
    """The head module that reads this archive (the CTC one for what is no ASR model: it says what the file is)."""
    if nemo_head(path) == "rnnt":
        from nest_ssl.asr import nemo_rnnt

        return nemo_rnnt
    from nest_ssl.asr import nemo_ctc

    return nemo_ctc


def asr_from_nemo(path: str | Path, what: str = "model", tokenizer=None):
    """(our CTCModel or RNNTModel in eval mode, tokenizer) of a NeMo CTC or RNN-T archive."""
    return _reader(path).model_from_nemo(path, what, tokenizer)


def sections_from_nemo(path: str | Path, what: str = "--init-from") -> dict:
    """The config sections to build a model like the archive's (checked): preprocessor and encoder, and for an
    RNN-T archive its head sections too."""
    return _reader(path).sections_of_nemo(path, what)


def tokenizer_of_asr_nemo(path: str | Path, what: str = "--tokenizer"):
    """The tokenizer inside a NeMo CTC or RNN-T archive (`--tokenizer X.nemo`); the weights are not read."""
    return _reader(path).tokenizer_of_nemo(path, what)


def config_only(path: str | Path, what: str) -> NemoASR:
    """The archive with its config and no weights (enough for its tokenizer); a damaged file is reported."""
    cfg = read_config_only(Path(path))
    if not cfg:
        return read_asr_nemo(path, what)  # says what is wrong with the file
    return NemoASR(Path(path), resolved(cfg), {}, str(cfg.get("target") or "").rpartition(".")[2])


def refuse_class(nemo: NemoASR, what: str, allowed: tuple[str, ...]) -> None:
    """One line when the archive's `target` is not one of `allowed` (the head's classes)."""
    if not nemo.model_class or nemo.model_class in allowed:
        return
    if "Hybrid" in nemo.model_class:
        hint = " (a hybrid RNN-T + CTC model, which is not read here)"
    elif "MaskedTokenPred" in nemo.model_class:
        hint = " (a pretrained NEST model: fine-tune it with --init-from)"
    else:
        hint = ""
    raise ASRError(f"{what} {nemo.path}: target is {nemo.cfg.get('target')}{hint}; nest-ssl loads NeMo's CTC and "
                   f"RNN-T models ({', '.join(ASR_CLASSES)})")


def class_of(section: Any) -> str:
    target = section.get("_target_", "") if isinstance(section, Mapping) else ""
    return str(target).rpartition(".")[2]


def check_runnable(nemo: NemoASR, what: str = "model") -> None:
    """One line naming the key for what nest-ssl cannot run: another encoder (Citrinet, QuartzNet, Squeezeformer...)
    or preprocessor class, adapters."""
    for section, cls in SUPPORTED_SECTIONS.items():
        node = nemo.cfg.get(section)
        if not isinstance(node, Mapping):
            raise ASRError(f"{what} {nemo.path}: its model_config.yaml has no {section} section; not an ASR model "
                           "nest-ssl can load")
        if class_of(node) != cls:
            raise ASRError(f"{what} {nemo.path}: {section}._target_ is {node.get('_target_')}; nest-ssl runs only "
                           f"NeMo's {cls} there (a Conformer / FastConformer model)")
    adapters = [k for k in nemo.state_dict if ".adapter_layer." in k]
    if nemo.cfg.get("adapters") or adapters:
        key = "adapters" if nemo.cfg.get("adapters") else adapters[0]
        raise ASRError(f"{what} {nemo.path}: {key}: adapters are not implemented in nest-ssl; merge or remove them "
                       "in NeMo first")


def our_sections(nemo: NemoASR) -> dict:
    """sample_rate, preprocessor, spec_augment and encoder of our model config, from a checked NeMo config (NeMo's
    `_target_`s are kept: nest_ssl.config maps them to our classes)."""
    cfg = nemo.cfg
    spec = dict(cfg.get("spec_augment") or {})
    dropped = [k for k in _UNIMPLEMENTED_SPEC_AUGMENT if spec.pop(k, None)]
    if dropped:
        log.warning("%s: spec_augment.%s is not implemented here and is left out (it only masks during training)",
                    nemo.path, dropped[0])
    spec.pop("rng", None)
    preprocessor = copy.deepcopy(dict(cfg["preprocessor"]))
    sample_rate = int(cfg.get("sample_rate") or preprocessor.get("sample_rate", 16000))
    return {"sample_rate": sample_rate, "preprocessor": preprocessor,
            "spec_augment": {**spec, "_target_": f"{NEMO_MODULES}.SpectrogramAugmentation"},
            "encoder": copy.deepcopy(dict(cfg["encoder"]))}


def load_weights(model: torch.nn.Module, nemo: NemoASR, what: str, head: str) -> None:
    """The archive's weights into the model built from its config, strictly (the names are NeMo's on both sides):
    a tensor missing, left over or of another shape is one line."""
    ours = model.state_dict()
    unexpected = [k for k in nemo.state_dict if k not in ours]
    missing = [k for k in ours if k not in nemo.state_dict]
    shapes = [k for k in ours if k in nemo.state_dict and ours[k].shape != nemo.state_dict[k].shape]
    for what_is, keys in ((f"holds weights nest-ssl's {head} model has no place for", unexpected),
                          ("lacks the weight", missing), ("has another shape for", shapes)):
        if keys:
            more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
            raise ASRError(f"{what} {nemo.path}: {what_is}: {keys[0]}{more}; a NeMo feature nest-ssl does not "
                           "implement, or a damaged archive")
    model.load_state_dict(nemo.state_dict)


def head_weight(nemo: NemoASR, key: str, tok, what: str, head: str, article: str = "a") -> torch.Tensor:
    """The head's output weight `key` (one row per class), checked against the tokenizer: its tokens + 1 blank."""
    weight = nemo.state_dict.get(key)
    if weight is None:
        raise ASRError(f"{what} {nemo.path}: has no {key}; not {article} {head} model's weights")
    if weight.shape[0] != tok.vocab_size + 1:
        raise ASRError(f"{what} {nemo.path}: its {head} head has {weight.shape[0]} classes but the tokenizer has "
                       f"{tok.vocab_size} tokens (+1 blank); give the tokenizer the model was trained with")
    return weight


def model_from_archive(model_class, cfg: dict, nemo: NemoASR, what: str, head: str) -> torch.nn.Module:
    """`model_class(cfg)` with the archive's weights, in eval mode; a config nest-ssl cannot build is one line."""
    from nest_ssl.errors import UserError

    try:
        model = model_class(cfg)
    except (UserError, ValueError, TypeError, NotImplementedError, KeyError) as err:
        raise ASRError(f"{what} {nemo.path}: its config cannot be built here: {str(err).splitlines()[0]}") from None
    load_weights(model, nemo, what, head)
    return model.eval()


def tokenizer_from_nemo(nemo: NemoASR, labels: list[str] | None, what: str = "model"):
    """The tokenizer of an ASR archive: its SentencePiece model (the `tokenizer.model_path` artifact), or, with no
    tokenizer section, the character labels the head gives (`labels`)."""
    from nest_ssl.asr.tokenizer import CharTokenizer, SentencePieceTokenizer
    from nest_ssl.checkpoint.nemo import read_nemo_files
    from nest_ssl.errors import UserError

    section = nemo.cfg.get("tokenizer")
    if section:
        kind = str(section.get("type", "")).lower()
        if kind != "bpe":
            raise ASRError(f"{what} {nemo.path}: tokenizer.type is {section.get('type')!r}; nest-ssl reads "
                           "SentencePiece tokenizers (type bpe) and character labels, not WordPiece or aggregate ones")
        model_path = section.get("model_path")
        if not model_path:
            raise ASRError(f"{what} {nemo.path}: tokenizer.model_path is missing; the archive does not say where its "
                           "SentencePiece model is")
        try:
            blob = read_nemo_files(nemo.path, [str(model_path)])[str(model_path)]
        except UserError as err:
            raise ASRError(f"{what} {err}") from None
        return SentencePieceTokenizer(blob, "bpe")
    if not labels:
        raise ASRError(f"{what} {nemo.path}: has neither a tokenizer section nor a label vocabulary; cannot tell its "
                       "output classes apart")
    bad = [c for c in labels if not isinstance(c, str) or len(c) != 1]
    if bad:
        raise ASRError(f"{what} {nemo.path}: its labels are not single characters ({bad[0]!r}); not a character model "
                       "nest-ssl reads")
    return CharTokenizer(list(labels))
