#!/usr/bin/env python3
"""Labelled sets for Libri-light's limited-resource ASR benchmark: CutSets for `nest-ssl evaluate` (egs/librilight
stage 8) or NeMo ASR manifests for `nest-ssl finetune` / `decode` (stage 10).

    prepare_librispeech_eval.py --librispeech-dir DIR --finetuning-dir DIR --out-dir DIR [--subsets 10min,1h,10h]
        [--format cuts|nemo] [--case lower|upper] [--nj N]

- `--finetuning-dir`: Libri-light's `librispeech_finetuning` (from librispeech_finetuning.tgz): `1h/<0..5>/{clean,
  other}/<speaker>/<chapter>/*.flac` with LibriSpeech's `<speaker>-<chapter>.trans.txt`, and `9h/{clean,other}/...`.
  The subsets are folders: 10min = `1h/0` (one of the six 10-minute folds), 1h = `1h/*`, 10h = `1h/*` + `9h`
  (Libri-light's definition); 100h is LibriSpeech's train-clean-100 (read from `--librispeech-dir`).
- `--librispeech-dir`: LibriSpeech with dev-clean, dev-other, test-clean, test-other (and train-clean-100 for the
  100h subset), read with lhotse's `prepare_librispeech`.
- `--format cuts` (default) writes OUT/train_<subset>_cuts.jsonl.gz and OUT/{dev,test}_{clean,other}_cuts.jsonl.gz;
  `--format nemo` writes NeMo manifests (JSON lines: absolute audio_filepath, duration, text) OUT/train_<subset>.json
  and OUT/{dev,test}_{clean,other}.json.
- `--case`: transcripts lower-cased (default: the evaluator's CTC vocabulary is a-z, space, apostrophe) or upper-cased
  (LibriSpeech as distributed, and its LM text and ARPA files); whitespace is collapsed either way.

Each utterance is one cut with its speaker. There are no phone alignments and the speakers differ between splits, so
only the evaluator's asr and finetune tasks apply. Nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nest_ssl.errors import UserError  # noqa: E402

SUBSETS = {"10min": ["1h/0"], "1h": ["1h"], "10h": ["1h", "9h"]}  # folders of librispeech_finetuning
LIBRISPEECH_SUBSETS = {"100h": "train-clean-100"}  # subsets that are LibriSpeech parts
ALL_SUBSETS = [*SUBSETS, *LIBRISPEECH_SUBSETS]
CASES = {"lower": str.lower, "upper": str.upper}
LIBRISPEECH_PARTS = ("dev-clean", "dev-other", "test-clean", "test-other")


def normalise(text: str, case: str = "lower") -> str:
    return " ".join(CASES[case](text).split())


def finetuning_cuts(root: Path, subset: str, case: str = "lower"):
    """The cuts of one Libri-light fine-tuning subset, read from its folders' .trans.txt files."""
    from lhotse import CutSet, Recording, SupervisionSegment

    if subset not in SUBSETS:
        raise UserError(f"--subsets {subset}: choose from {', '.join(ALL_SUBSETS)}")
    cuts = []
    for folder in SUBSETS[subset]:
        base = root / folder
        if not base.is_dir():
            raise UserError(f"--finetuning-dir {root}: no {folder}/ folder (subset {subset} needs it); give the "
                            "extracted librispeech_finetuning folder (it holds 1h/ and 9h/)")
        trans = sorted(base.rglob("*.trans.txt"))
        if not trans:
            raise UserError(f"--finetuning-dir {root}: {folder}/ holds no *.trans.txt transcripts")
        for tf in trans:
            for lineno, line in enumerate(tf.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                uid, _, text = line.strip().partition(" ")
                audio = tf.parent / f"{uid}.flac"
                if not audio.is_file():
                    raise UserError(f"{tf}:{lineno}: {audio.name} is missing beside the transcript")
                rec = Recording.from_file(audio, recording_id=uid)
                sup = SupervisionSegment(id=uid, recording_id=uid, start=0.0, duration=rec.duration, channel=0,
                                         text=normalise(text, case), speaker=uid.split("-")[0],
                                         language="English")
                cuts.append(_cut(rec, sup))
    return CutSet.from_cuts(sorted(cuts, key=lambda c: c.id))


def _cut(rec, sup):
    from lhotse import MonoCut

    return MonoCut(id=rec.id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])


def librispeech_cuts(root: Path, part: str, case: str = "lower", nj: int = 1):
    from lhotse import CutSet
    from lhotse.recipes import prepare_librispeech

    if not (root / part).is_dir():
        need = ", ".join(LIBRISPEECH_PARTS) + (f" and {part}" if part not in LIBRISPEECH_PARTS else "")
        raise UserError(f"--librispeech-dir {root}: no {part}/ folder; give the LibriSpeech folder holding {need} "
                        "(https://www.openslr.org/12)")
    manifests = prepare_librispeech(root, dataset_parts=[part], normalize_text="none", num_jobs=nj)
    if part not in manifests:
        raise UserError(f"--librispeech-dir {root}: lhotse found no utterances in {part}/")
    m = manifests[part]
    sups = m["supervisions"].transform_text(lambda t: normalise(t, case))
    return CutSet.from_manifests(recordings=m["recordings"], supervisions=sups).sort_by_duration()


def write_nemo_manifest(cuts, path: Path) -> Path:
    """NeMo's ASR manifest: one JSON object a line, audio_filepath absolute (the cuts are whole files)."""
    import json

    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for c in cuts:
            audio = Path(c.recording.sources[0].source).resolve()
            f.write(json.dumps({"audio_filepath": str(audio), "duration": round(c.duration, 4),
                                "text": c.supervisions[0].text}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write(cuts, out: Path, name: str, fmt: str) -> None:
    if fmt == "nemo":
        write_nemo_manifest(cuts, out / f"{name}.json")
    else:
        cuts.to_file(out / f"{name}_cuts.jsonl.gz")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--librispeech-dir", required=True, help="LibriSpeech: dev-clean, dev-other, test-clean, test-other")
    p.add_argument("--finetuning-dir", required=True, help="Libri-light's librispeech_finetuning (1h/, 9h/)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--subsets", default="10min,1h,10h", help="comma-separated: 10min, 1h, 10h, 100h")
    p.add_argument("--format", default="cuts", choices=("cuts", "nemo"), help="lhotse CutSets or NeMo manifests")
    p.add_argument("--case", default="lower", choices=tuple(CASES), help="the transcripts' case (default lower)")
    p.add_argument("--nj", type=int, default=1, help="parallel jobs for reading LibriSpeech's audio headers")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    subsets = [s for s in args.subsets.split(",") if s]
    for s in subsets:
        if s not in ALL_SUBSETS:
            raise UserError(f"--subsets {s}: choose from {', '.join(ALL_SUBSETS)}")
    for d, what in ((args.librispeech_dir, "--librispeech-dir"), (args.finetuning_dir, "--finetuning-dir")):
        if not Path(d).is_dir():
            raise UserError(f"{what} {d}: not a folder; nothing is downloaded here (see egs/librilight/README.md)")
    out.mkdir(parents=True, exist_ok=True)
    ls_root = Path(args.librispeech_dir)
    for s in subsets:
        if s in LIBRISPEECH_SUBSETS:
            cuts = librispeech_cuts(ls_root, LIBRISPEECH_SUBSETS[s], args.case, args.nj)
        else:
            cuts = finetuning_cuts(Path(args.finetuning_dir), s, args.case)
        write(cuts, out, f"train_{s}", args.format)
        print(f"train_{s}: {len(cuts)} utterances, {sum(c.duration for c in cuts) / 3600:.2f} h")
    for part in LIBRISPEECH_PARTS:
        cuts = librispeech_cuts(ls_root, part, args.case, args.nj)
        write(cuts, out, part.replace("-", "_"), args.format)
        print(f"{part}: {len(cuts)} utterances")
    return 0


if __name__ == "__main__":
    from nest_ssl.cli.guard import run_guarded

    sys.exit(run_guarded(main))
