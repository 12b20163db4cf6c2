#!/usr/bin/env python3
"""Labelled CutSets for `nest-ssl evaluate` on Libri-light's limited-resource ASR benchmark.

    prepare_librispeech_eval.py --librispeech-dir DIR --finetuning-dir DIR --out-dir DIR [--subsets 10min,1h,10h]

- `--finetuning-dir`: Libri-light's `librispeech_finetuning` (from librispeech_finetuning.tgz): `1h/<0..5>/{clean,
  other}/<speaker>/<chapter>/*.flac` with LibriSpeech's `<speaker>-<chapter>.trans.txt`, and `9h/{clean,other}/...`.
  The subsets are folders: 10min = `1h/0`, 1h = `1h/*`, 10h = `1h/*` + `9h` (Libri-light's definition).
  Writes OUT/train_<subset>_cuts.jsonl.gz.
- `--librispeech-dir`: LibriSpeech with dev-clean, dev-other, test-clean, test-other, read with lhotse's
  `prepare_librispeech`. Writes OUT/{dev,test}_{clean,other}_cuts.jsonl.gz.

Transcripts are lower-cased (the evaluator's CTC vocabulary: a-z, space, apostrophe); each cut is one utterance with
its speaker. There are no phone alignments and the speakers differ between splits, so only the asr and finetune
tasks apply. Nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nest_ssl.errors import UserError  # noqa: E402

SUBSETS = {"10min": ["1h/0"], "1h": ["1h"], "10h": ["1h", "9h"]}
LIBRISPEECH_PARTS = ("dev-clean", "dev-other", "test-clean", "test-other")


def finetuning_cuts(root: Path, subset: str):
    """The cuts of one Libri-light fine-tuning subset, read from its folders' .trans.txt files."""
    from lhotse import CutSet, Recording, SupervisionSegment

    if subset not in SUBSETS:
        raise UserError(f"--subsets {subset}: choose from {', '.join(SUBSETS)}")
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
                                         text=" ".join(text.lower().split()), speaker=uid.split("-")[0],
                                         language="English")
                cuts.append(_cut(rec, sup))
    return CutSet.from_cuts(sorted(cuts, key=lambda c: c.id))


def _cut(rec, sup):
    from lhotse import MonoCut

    return MonoCut(id=rec.id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])


def librispeech_cuts(root: Path, part: str):
    from lhotse import CutSet
    from lhotse.recipes import prepare_librispeech

    if not (root / part).is_dir():
        raise UserError(f"--librispeech-dir {root}: no {part}/ folder; give the LibriSpeech folder holding "
                        f"{', '.join(LIBRISPEECH_PARTS)} (https://www.openslr.org/12)")
    manifests = prepare_librispeech(root, dataset_parts=[part], normalize_text="lower")
    if part not in manifests:
        raise UserError(f"--librispeech-dir {root}: lhotse found no utterances in {part}/")
    m = manifests[part]
    return CutSet.from_manifests(recordings=m["recordings"], supervisions=m["supervisions"]).sort_by_duration()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--librispeech-dir", required=True, help="LibriSpeech: dev-clean, dev-other, test-clean, test-other")
    p.add_argument("--finetuning-dir", required=True, help="Libri-light's librispeech_finetuning (1h/, 9h/)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--subsets", default="10min,1h,10h", help="comma-separated: 10min, 1h, 10h")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    subsets = [s for s in args.subsets.split(",") if s]
    for s in subsets:
        if s not in SUBSETS:
            raise UserError(f"--subsets {s}: choose from {', '.join(SUBSETS)}")
    for d, what in ((args.librispeech_dir, "--librispeech-dir"), (args.finetuning_dir, "--finetuning-dir")):
        if not Path(d).is_dir():
            raise UserError(f"{what} {d}: not a folder; nothing is downloaded here (see egs/librilight/README.md)")
    out.mkdir(parents=True, exist_ok=True)
    for s in subsets:
        cuts = finetuning_cuts(Path(args.finetuning_dir), s)
        cuts.to_file(out / f"train_{s}_cuts.jsonl.gz")
        print(f"train_{s}: {len(cuts)} utterances, {sum(c.duration for c in cuts) / 3600:.2f} h")
    for part in LIBRISPEECH_PARTS:
        cuts = librispeech_cuts(Path(args.librispeech_dir), part)
        cuts.to_file(out / f"{part.replace('-', '_')}_cuts.jsonl.gz")
        print(f"{part}: {len(cuts)} utterances")
    return 0


if __name__ == "__main__":
    from nest_ssl.cli.guard import run_guarded

    sys.exit(run_guarded(main))
