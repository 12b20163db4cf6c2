"""Labelled audio for ASR: NeMo's JSON-lines manifests (`audio_filepath`, `duration`, `text`), as NeMo's ASR
datasets read them. Relative audio paths are relative to the manifest's folder. Every problem names the line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nest_ssl.asr.errors import ASRError


@dataclass(frozen=True)
class Utterance:
    audio: Path
    text: str
    where: str  # "manifest:line", for messages


def normalise(text: str) -> str:
    """Whitespace collapsed; case and punctuation are the data's (the tokenizer rejects what it cannot spell)."""
    return " ".join(text.split())


def read_manifest(path: str | Path, *, need_text: bool = True) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise ASRError(f"manifest {path}: does not exist; give a NeMo JSON-lines manifest with audio_filepath and text")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ASRError(f"{where}: not valid JSON ({err.msg}); each line is one JSON object") from None
        if not isinstance(rec, dict) or "audio_filepath" not in rec:
            raise ASRError(f"{where}: has no audio_filepath")
        if need_text and not isinstance(rec.get("text"), str):
            raise ASRError(f"{where}: has no text (a string); ASR manifests need the transcript")
        audio = Path(rec["audio_filepath"])
        if not audio.is_absolute():
            audio = path.parent / audio
        if not audio.is_file():
            raise ASRError(f"{where}: audio_filepath {audio} does not exist")
        out.append(Utterance(audio, normalise(rec.get("text", "")), where))
    return out


def read_nonempty_manifest(path: str | Path, what: str) -> list[Utterance]:
    utts = read_manifest(path)
    if not utts:
        raise ASRError(f"{what} {path}: has no utterance; give a manifest with at least one line")
    return utts
