"""Labelled audio as Lhotse cuts: NeMo JSON-lines manifests (`audio_filepath`, `duration`, `text`) and Lhotse
CutSets (`.jsonl[.gz]`, the transcript in the cuts' supervisions), through nest_ssl.data's lazy reader.

A NeMo line becomes the cut the NEST trainer makes of it (nest_ssl.data.manifests.nemo_line_to_cut: the text stays
in `cut.custom["text"]`); a Lhotse cut carries its text in its supervisions (joined by a space when there are
several). `iter_labelled` streams (place, cut, text) with the place as "file:line", for the checks that run before
anything is written (`check_labelled`); training reads the same files through the sampler, lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from nest_ssl.asr.errors import ASRError
from nest_ssl.asr.manifest import normalise


def cut_text(cut: Any) -> str | None:
    """The transcript of a cut (normalised), or None when it has none."""
    sups = [s.text for s in (getattr(cut, "supervisions", None) or []) if getattr(s, "text", None)]
    if sups:
        return normalise(" ".join(sups))
    custom = getattr(cut, "custom", None) or {}
    text = custom.get("text")
    return normalise(text) if isinstance(text, str) else None


def _audio_path(cut: Any) -> str | None:
    rec = getattr(cut, "recording", None)
    if rec is None or not rec.sources or rec.sources[0].type != "file":
        return None
    return str(rec.sources[0].source)


def iter_labelled(spec: Any, what: str, sample_rate: int) -> Iterator[tuple[str, Any, str]]:
    """(place "file:line", cut, transcript) for every line of the manifests in `spec` (a path, "a,b" or a list)."""
    from nest_ssl.data.manifests import ManifestError, _iter_jsonl, _iter_lhotse_file, nemo_line_to_cut, resolve_parts

    try:
        parts = resolve_parts(spec, what=what)
    except ManifestError as err:
        raise ASRError(str(err)) from None
    for part in parts:
        if part.kind == "shar":
            raise ASRError(f"{what}: {part.path} is a Lhotse Shar shard; fine-tuning reads NeMo manifests or Lhotse "
                           "CutSets (.jsonl.gz) with transcripts")
        try:
            if part.kind == "nemo":
                for lineno, data in _iter_jsonl(part.path, what):
                    where = f"{part.path}:{lineno}"
                    if not isinstance(data.get("text"), str):
                        raise ASRError(f"{where}: has no text (a string); ASR manifests need the transcript")
                    cut = nemo_line_to_cut(data, path=part.path, lineno=lineno, what=what, sample_rate=sample_rate)
                    yield where, cut, normalise(data["text"])
            else:
                for lineno, cut in enumerate(_iter_lhotse_file(part.path, what), 1):
                    where = f"{part.path}:{lineno}"
                    text = cut_text(cut)
                    if text is None:
                        raise ASRError(f"{where}: cut {cut.id} has no supervision text; fine-tuning needs the "
                                       "transcript")
                    yield where, cut, text
        except ManifestError as err:
            raise ASRError(str(err)) from None


@dataclass
class LabelledSet:
    """What the checks learnt of one set: where it is, its size, its transcripts (text only, for the tokenizer)."""

    spec: str
    utterances: int = 0
    seconds: float = 0.0
    texts: list[str] = field(default_factory=list)


def check_labelled(spec: Any, what: str, sample_rate: int, tokenizer=None, *, need_audio: bool = True,
                   keep_texts: bool = False) -> LabelledSet:
    """Every line read once before anything is written: a transcript, audio that exists and has a readable header,
    and (with `tokenizer`) characters the tokenizer can spell; any problem is one line naming file:line."""
    from pathlib import Path

    from nest_ssl.asr.audio import check_audio

    spec_text = ",".join(map(str, spec)) if isinstance(spec, (list, tuple)) else str(spec)
    out = LabelledSet(spec=spec_text)
    for where, cut, text in iter_labelled(spec, what, sample_rate):
        path = _audio_path(cut)
        if need_audio and path is not None:
            if not Path(path).is_file():
                raise ASRError(f"{where}: audio_filepath {path} does not exist")
            check_audio([(path, where)])
        if tokenizer is not None:
            tokenizer.encode(text, where)
        out.utterances += 1
        out.seconds += float(cut.duration)
        if keep_texts:
            out.texts.append(text)
    if out.utterances == 0:
        raise ASRError(f"{what} {spec_text}: has no utterance; give a manifest with at least one line")
    return out
