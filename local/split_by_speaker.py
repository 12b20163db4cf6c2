#!/usr/bin/env python3
"""Hold out whole speakers for validation: CUTS -> TRAIN.jsonl.gz + VAL.jsonl.gz, streaming.

  split_by_speaker.py CUTS TRAIN_OUT VAL_OUT [--val-speakers 4] [--max-val-hours 2] [--seed 0]

A window's speaker is its first supervision's speaker, or for cuts without one the <speaker> part of a LibriLight
recording id (<subset>/<speaker>/<book>/<file>). Speakers are held out whole, so the validation loss measures
generalisation to unseen voices rather than memorised ones. Which speakers: the --val-speakers smallest of
sha1("<seed>:<speaker>"), i.e. a fixed pseudo-random choice that does not depend on the order of the cuts or on
which other speakers exist. Windows of held-out speakers beyond --max-val-hours are dropped, not moved to
training (that would leak those speakers back in), so validation stays cheap on big corpora.

Two passes over CUTS (the first only collects speaker names); memory holds the set of speakers.
"""

import argparse
import hashlib
import os
import sys


def speaker_of(cut) -> str:
    for s in cut.supervisions:
        if s.speaker:
            return str(s.speaker)
    rid = cut.recording_id if getattr(cut, "has_recording", True) else cut.id
    parts = str(rid).split("/")
    return parts[1] if len(parts) >= 3 else str(rid)


def choose(speakers, n, seed):
    return set(sorted(speakers, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())[:n])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cuts")
    p.add_argument("train_out")
    p.add_argument("val_out")
    p.add_argument("--val-speakers", type=int, default=4)
    p.add_argument("--max-val-hours", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from lhotse import CutSet, load_manifest_lazy

    cuts = load_manifest_lazy(a.cuts)
    if cuts is None:
        print(f"split_by_speaker: {a.cuts} is empty", file=sys.stderr)
        return 1
    speakers = {speaker_of(c) for c in cuts}
    if len(speakers) <= a.val_speakers:
        print(f"split_by_speaker: only {len(speakers)} speakers in {a.cuts}; cannot hold out {a.val_speakers} and "
              f"keep some for training (lower --val-speakers)", file=sys.stderr)
        return 1
    held = choose(speakers, a.val_speakers, a.seed)
    limit = a.max_val_hours * 3600
    n = {"train": 0, "val": 0, "dropped": 0}
    secs = {"train": 0.0, "val": 0.0, "dropped": 0.0}
    tmp_train, tmp_val = a.train_out + ".tmp.jsonl.gz", a.val_out + ".tmp.jsonl.gz"
    with CutSet.open_writer(tmp_train) as tw, CutSet.open_writer(tmp_val) as vw:
        for c in cuts:
            if speaker_of(c) not in held:
                key, writer = "train", tw
            elif secs["val"] + c.duration <= limit:
                key, writer = "val", vw
            else:
                key, writer = "dropped", None
            if writer is not None:
                writer.write(c)
            n[key] += 1
            secs[key] += c.duration
    os.replace(tmp_train, a.train_out)
    os.replace(tmp_val, a.val_out)
    print(f"train: {n['train']} cuts, {secs['train'] / 3600:.2f} h, {len(speakers) - len(held)} speakers; "
          f"val: {n['val']} cuts, {secs['val'] / 3600:.2f} h, held-out speakers {' '.join(sorted(held))}"
          + (f"; {n['dropped']} held-out cuts ({secs['dropped'] / 3600:.2f} h) over --max-val-hours dropped"
             if n["dropped"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
