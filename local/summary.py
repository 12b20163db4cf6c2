#!/usr/bin/env python3
"""The end of a recipe: which checkpoint to export, and the summary of a run.

  summary.py last-checkpoint RUN_DIR
      prints the newest last checkpoint in RUN_DIR/checkpoints (the one training resumes from)
  summary.py summary RUN_DIR --train-cuts CUTS --val-cuts CUTS [--checkpoint CKPT]
      prints hours of audio used (training and validation windows, speakers), steps and epochs, the final
      train_loss and val_loss (from RUN_DIR/metrics.jsonl, which the trainer writes beside TensorBoard's events),
      and where the exported models and the loss plot are.

Standard library only (reads JSON lines; the step is in the checkpoint's name), so it costs no torch import.
"""

import argparse
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from split_by_speaker import iter_cuts, speaker_of  # noqa: E402


def last_checkpoint(run_dir: str) -> str:
    """Newest `*last.ckpt` (the trainer writes them atomically, so a file with that name is complete)."""
    found = [p for p in glob.glob(os.path.join(run_dir, "checkpoints", "*last.ckpt"))
             if not os.path.basename(p).startswith(".")]
    if not found:
        raise SystemExit(f"summary.py: no *last.ckpt in {run_dir}/checkpoints; run the training stage first")
    return max(found, key=os.path.getmtime)


def cuts_stats(path: str):
    n, secs, speakers = 0, 0.0, set()
    if os.path.exists(path):
        for _, c in iter_cuts(path):
            n += 1
            secs += c["duration"]
            speakers.add(speaker_of(c))
    return n, secs, len(speakers)


def metrics(run_dir: str):
    """step -> value for train_loss, val_loss, epoch; a resumed run re-logs steps, and its later value wins."""
    rows = []
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line from a killed run
    out = {}
    for key in ("train_loss", "val_loss", "epoch"):
        out[key] = {int(r["step"]): float(r[key]) for r in rows if isinstance(r.get(key), (int, float))}
    return out


def summary(run_dir, train_cuts, val_cuts, checkpoint=None) -> str:
    n_tr, s_tr, spk_tr = cuts_stats(train_cuts)
    n_va, s_va, spk_va = cuts_stats(val_cuts)
    m = metrics(run_dir)
    step = max(list(m["train_loss"]) + list(m["val_loss"]), default=0)
    if checkpoint:
        found = re.search(r"step=(\d+)", os.path.basename(checkpoint))
        step = int(found.group(1)) if found else step
    lines = [f"NEST pretraining summary: {run_dir}"]
    lines.append(f"  audio used:   training {s_tr / 3600:.3f} h ({n_tr} windows, {spk_tr} speaker(s)); "
                 f"validation {s_va / 3600:.3f} h ({n_va} windows, {spk_va} held-out speaker(s))")
    epochs = m["epoch"]
    lines.append(f"  steps:        {step}" + (f" (epoch {int(epochs[max(epochs)])})" if epochs else ""))
    tl, vl = m["train_loss"], m["val_loss"]
    if tl:
        lines.append(f"  train_loss:   {tl[max(tl)]:.4f} at step {max(tl)} (first logged: {tl[min(tl)]:.4f} at step "
                     f"{min(tl)})")
    if vl:
        best = min(vl, key=vl.get)
        lines.append(f"  val_loss:     {vl[max(vl)]:.4f} at step {max(vl)} (final); best {vl[best]:.4f} at step {best}")
    else:
        lines.append("  val_loss:     none logged (no validation ran: check trainer.val_check_interval)")
    if checkpoint:
        lines.append(f"  checkpoint:   {checkpoint}")
    for name in ("model.nemo", "encoder.ckpt"):
        p = os.path.join(run_dir, "export", name)
        if os.path.exists(p):
            lines.append(f"  exported:     {p} ({os.path.getsize(p) / 2**20:.1f} MiB)")
    plots = sorted(glob.glob(os.path.join(run_dir, "*.png")), key=os.path.getmtime)
    lines.append(f"  loss plot:    {plots[-1] if plots else 'not found'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    lc = sub.add_parser("last-checkpoint")
    lc.add_argument("run_dir")
    s = sub.add_parser("summary")
    s.add_argument("run_dir")
    s.add_argument("--train-cuts", required=True)
    s.add_argument("--val-cuts", required=True)
    s.add_argument("--checkpoint")
    a = p.parse_args(argv)
    if a.what == "last-checkpoint":
        print(last_checkpoint(a.run_dir))
    else:
        print(summary(a.run_dir, a.train_cuts, a.val_cuts, a.checkpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
