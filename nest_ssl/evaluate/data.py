"""The labelled splits: lhotse CutSets read once into memory, checked against what the tasks need.

Each cut is one utterance with ONE SupervisionSegment covering it: `text` (asr, finetune), `speaker` (speaker) and
`alignment["phone"]` (phone), a list of lhotse AlignmentItems. Alignment times are lhotse's: seconds from the
start of the *recording* (lhotse does not shift them when a cut is trimmed), so a frame's time is
`cut.start + (i + 0.5) * frame_shift`. Frames that no phone covers are silence, "sil".

Every cut that lacks what a task needs is counted and the first one named (file, line, cut id), so the user learns
the extent of the problem in one message and can fix the data or drop the task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nest_ssl.evaluate.errors import EvaluationError

log = logging.getLogger(__name__)

SILENCE = "sil"
# asr/finetune: lower-case letters, space, apostrophe (blank is index 0 of the CTC vocabulary, not listed here).
CHARACTERS = tuple("abcdefghijklmnopqrstuvwxyz '")
SPLITS = ("train", "dev", "test")
# what each task reads from the supervision, and how to say it is missing
NEEDS = {
    "phone": ("phone alignment", "supervision.alignment['phone'] (a list of AlignmentItem)"),
    "speaker": ("speaker", "supervision.speaker"),
    "asr": ("text", "supervision.text"),
    "finetune": ("text", "supervision.text"),
}


@dataclass
class Utterance:
    cut_id: str
    audio: np.ndarray  # (samples,) float32 at the model's sampling rate
    start: float  # the cut's start in its recording: alignment times are relative to the recording
    duration: float
    text: str | None
    speaker: str | None
    phones: list[tuple[str, float, float]] | None  # (symbol, start, duration) in recording time


def normalize_text(text: str) -> str:
    """Lower case, single spaces (the contract's form); other characters are left for the caller to refuse."""
    return " ".join(text.lower().split())


def _missing(sup, task: str) -> bool:
    if task == "phone":
        ali = sup.alignment or {}
        return not ali.get("phone")
    if task == "speaker":
        return not sup.speaker
    return sup.text is None or not normalize_text(sup.text)


def load_split(path: str | Path, split: str, tasks: Sequence[str], sample_rate: int) -> list[Utterance]:
    """Every cut of one split, audio loaded (mono, resampled to `sample_rate`), checked for `tasks`."""
    from nest_ssl.data.manifests import open_cutset

    what = f"--{split}-cuts"
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{what} {path}: does not exist; give the {split} CutSet (.jsonl.gz) of the labelled set")
    cuts = open_cutset(str(path), what=what, sample_rate=sample_rate)
    utts: list[Utterance] = []
    missing: dict[str, list[str]] = {t: [] for t in tasks}
    bad_chars: dict[str, str] = {}
    for index, cut in enumerate(cuts):
        where = f"cut {cut.id!r} (line {index + 1})"
        sups = list(cut.supervisions)
        if len(sups) != 1:
            raise EvaluationError(
                f"{what} {path}: {where} has {len(sups)} supervisions; evaluation expects exactly one covering each "
                "cut (split long recordings with cuts.trim_to_supervisions())")
        sup = sups[0]
        for task in tasks:
            if _missing(sup, task):
                missing[task].append(where)
        text = normalize_text(sup.text) if sup.text else None
        if text is not None and any(t in ("asr", "finetune") for t in tasks):
            odd = sorted(set(text) - set(CHARACTERS))
            if odd and not bad_chars:
                bad_chars = {"where": where, "chars": "".join(odd)}
        if cut.sampling_rate != sample_rate:
            cut = cut.resample(sample_rate)
        try:
            audio = cut.load_audio()
        except Exception as err:  # lhotse raises many types for unreadable audio; all mean "fix this file"
            raise EvaluationError(f"{what} {path}: {where}: cannot read its audio ({type(err).__name__}: "
                                  f"{str(err)[:200]})") from err
        if audio.ndim == 2:
            audio = audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]
        phones = None
        if sup.alignment and sup.alignment.get("phone"):
            phones = [(a.symbol, float(a.start), float(a.duration)) for a in sup.alignment["phone"]]
        utts.append(Utterance(cut_id=cut.id, audio=np.ascontiguousarray(audio, dtype=np.float32),
                              start=float(cut.start), duration=float(cut.duration), text=text,
                              speaker=sup.speaker, phones=phones))
    if not utts:
        raise EvaluationError(f"{what} {path}: holds no cuts; give the {split} CutSet of the labelled set")
    for task, where in missing.items():
        if where:
            name, field = NEEDS[task]
            raise EvaluationError(
                f"{what} {path}: {len(where)} of {len(utts)} cuts have no {name} ({field}), the first: {where[0]}; "
                f"the {task} task needs it: add it to the CutSet or leave {task} out of --tasks")
    if bad_chars:
        raise EvaluationError(
            f"{what} {path}: {bad_chars['where']}: text has characters outside a-z, space and apostrophe "
            f"({bad_chars['chars']!r}); the CTC tasks need normalised text (lower case, no punctuation or digits)")
    return utts


def frame_labels(utt: Utterance, num_frames: int, frame_shift: float) -> list[str]:
    """The phone at the centre of each encoder frame, "sil" where no phone covers it."""
    labels = [SILENCE] * num_frames
    if not utt.phones:
        return labels
    centres = utt.start + (np.arange(num_frames) + 0.5) * frame_shift
    for symbol, start, duration in utt.phones:
        inside = (centres >= start) & (centres < start + duration)
        for i in np.nonzero(inside)[0]:
            labels[i] = symbol
    return labels


def index_of(values: Iterable[str]) -> dict[str, int]:
    """Sorted vocabulary -> index (sorted so that the class order does not depend on the order of the cuts)."""
    return {v: i for i, v in enumerate(sorted(set(values)))}


def check_closed_set(train: Sequence[Utterance], other: Sequence[Utterance], path: str | Path, split: str) -> None:
    """Speaker ID is closed-set: a dev/test speaker never seen in training cannot be classified."""
    known = {u.speaker for u in train}
    unseen = sorted({u.speaker for u in other} - known)
    if unseen:
        raise EvaluationError(
            f"--{split}-cuts {path}: speakers {', '.join(unseen[:5])}{' ...' if len(unseen) > 5 else ''} are not in "
            "the train cuts; speaker identification is closed-set (the same speakers in every split, different "
            "sentences): fix the split or leave speaker out of --tasks")
