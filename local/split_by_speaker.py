#!/usr/bin/env python3
"""Hold out whole speakers for validation: CUTS -> TRAIN.jsonl.gz + VAL.jsonl.gz, streaming.

  split_by_speaker.py CUTS TRAIN_OUT VAL_OUT [--val-speakers 4] [--max-val-hours 2] [--seed 0]

A window's speaker is its first supervision's speaker, or for cuts without one the <speaker> part of a LibriLight
recording id (<subset>/<speaker>/<book>/<file>). Speakers are held out whole, so the validation loss measures
generalisation to unseen voices rather than memorised ones. Which speakers: the --val-speakers smallest of
sha1("<seed>:<speaker>"), i.e. a fixed pseudo-random choice that does not depend on the order of the cuts or on
which other speakers exist. Windows of held-out speakers beyond --max-val-hours are dropped, not moved to
training (that would leak those speakers back in), so validation stays cheap on big corpora.

Two passes over CUTS (the first only collects speaker names); memory holds the set of speakers. Lines are copied
as they are (a lhotse CutSet in, the same cuts out), so this needs neither lhotse nor torch and starts at once.
"""

import argparse
import gzip
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's nest_ssl
from nest_ssl.cli.guard import run_guarded  # noqa: E402  (standard library only: no torch import)
from nest_ssl.errors import UserError  # noqa: E402


def speaker_of(cut: dict) -> str:
    for s in cut.get("supervisions") or []:
        if s.get("speaker"):
            return str(s["speaker"])
    rid = (cut.get("recording") or {}).get("id") or cut.get("id", "")
    parts = str(rid).split("/")
    return parts[1] if len(parts) >= 3 else str(rid)


def iter_cuts(path):
    """(raw line, cut dict) for each line of a .jsonl or .jsonl.gz CutSet."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a directory; give a CutSet file (.jsonl or .jsonl.gz)")
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    cut = json.loads(line)
                except ValueError as err:
                    raise UserError(f"{path}:{lineno}: not a JSON line ({err}); regenerate the cuts") from None
                if not isinstance(cut, dict) or not isinstance(cut.get("duration"), (int, float)):
                    raise UserError(f"{path}:{lineno}: not a Lhotse cut (no numeric duration); give a CutSet")
                yield line if line.endswith("\n") else line + "\n", cut
        except (EOFError, gzip.BadGzipFile, UnicodeDecodeError) as err:
            raise UserError(f"{path}: cannot be read ({type(err).__name__}: {err}); is it truncated, or not a "
                            "(gzipped) JSON-lines CutSet?") from None


def choose(speakers, n, seed):
    return set(sorted(speakers, key=lambda s: hashlib.sha1(f"{seed}:{s}".encode()).hexdigest())[:n])


class _GzipOut:
    """A .jsonl.gz writer whose bytes depend on the content only (mtime=0, no name in the header), so stages
    reading it see no change when it is rewritten with the same cuts."""

    def __init__(self, path):
        self.raw = open(path, "wb")
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, mtime=0)

    def write(self, data: bytes) -> None:
        self.gz.write(data)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.gz.close()
        self.raw.close()


def _main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cuts")
    p.add_argument("train_out")
    p.add_argument("val_out")
    p.add_argument("--val-speakers", type=int, default=4)
    p.add_argument("--max-val-hours", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    speakers = {speaker_of(c) for _, c in iter_cuts(a.cuts)}
    if len(speakers) <= a.val_speakers:
        raise UserError(f"split_by_speaker: {len(speakers)} speaker(s) in {a.cuts}; cannot hold out "
                        f"{a.val_speakers} and keep some for training (lower --val-speakers)")
    held = choose(speakers, a.val_speakers, a.seed)
    limit = a.max_val_hours * 3600
    n = {"train": 0, "val": 0, "dropped": 0}
    secs = {"train": 0.0, "val": 0.0, "dropped": 0.0}
    tmp_train, tmp_val = a.train_out + ".tmp", a.val_out + ".tmp"
    with _GzipOut(tmp_train) as tw, _GzipOut(tmp_val) as vw:
        for line, c in iter_cuts(a.cuts):
            if speaker_of(c) not in held:
                key, out = "train", tw
            elif secs["val"] + c["duration"] <= limit:
                key, out = "val", vw
            else:
                key, out = "dropped", None
            if out is not None:
                out.write(line.encode("utf-8"))
            n[key] += 1
            secs[key] += c["duration"]
    if n["val"] == 0:
        os.remove(tmp_train)
        os.remove(tmp_val)
        raise UserError(f"split_by_speaker: no validation windows fit in --max-val-hours {a.max_val_hours}")
    os.replace(tmp_train, a.train_out)
    os.replace(tmp_val, a.val_out)
    print(f"train: {n['train']} cuts, {secs['train'] / 3600:.2f} h, {len(speakers) - len(held)} speakers; "
          f"val: {n['val']} cuts, {secs['val'] / 3600:.2f} h, held-out speakers {' '.join(sorted(held))}"
          + (f"; {n['dropped']} held-out cuts ({secs['dropped'] / 3600:.2f} h) over --max-val-hours dropped"
             if n["dropped"] else ""))
    return 0


def main(argv=None) -> int:
    """User errors: one line `nest-ssl: error: ...`, exit 2 (--debug or NEST_SSL_DEBUG=1: with the traceback)."""
    return run_guarded(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
