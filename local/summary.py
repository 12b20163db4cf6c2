#!/usr/bin/env python3
"""The end of a recipe: which checkpoint to export, and the summary of a run.

  summary.py last-checkpoint RUN_DIR
      prints the checkpoint training would resume from (the newest intact last checkpoint in RUN_DIR/checkpoints)
  summary.py summary RUN_DIR --train-cuts CUTS --val-cuts CUTS [--checkpoint CKPT]
      prints hours of audio used (training and validation windows, speakers), steps and epochs, the final
      train_loss and val_loss (from RUN_DIR/metrics.jsonl, which the trainer writes next to TensorBoard), and
      where the exported models and the loss plot are.
"""

import argparse
import glob
import json
import os
import sys


def _last_checkpoint(run_dir: str) -> str:
    from nest_ssl.train.checkpoint import find_resume_checkpoint

    found = find_resume_checkpoint(os.path.join(run_dir, "checkpoints"))
    if found is None or found.path is None:
        raise SystemExit(f"summary.py: no intact checkpoint in {run_dir}/checkpoints; run the training stage first")
    return str(found.path)


def _cuts_stats(path: str):
    from lhotse import load_manifest_lazy

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from split_by_speaker import speaker_of

    n, secs, speakers = 0, 0.0, set()
    cuts = load_manifest_lazy(path) if os.path.exists(path) else None
    for c in cuts or []:
        n += 1
        secs += c.duration
        speakers.add(speaker_of(c))
    return n, secs, len(speakers)


def _metrics(run_dir: str):
    rows = []
    path = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a torn last line from a killed run

    def series(key):
        out = {}
        for r in rows:  # a resumed run re-logs steps; the later value wins
            if key in r and isinstance(r[key], (int, float)):
                out[int(r["step"])] = float(r[key])
        return out

    return series("train_loss"), series("val_loss"), series("epoch")


def summary(run_dir, train_cuts, val_cuts, checkpoint=None) -> str:
    n_tr, s_tr, spk_tr = _cuts_stats(train_cuts)
    n_va, s_va, spk_va = _cuts_stats(val_cuts)
    train_loss, val_loss, epochs = _metrics(run_dir)
    step = max(list(train_loss) + list(val_loss), default=0)
    epoch = None
    if checkpoint:
        import torch

        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        step = int(ck.get("global_step", step))
        epoch = ck.get("epoch")
    if epoch is None and epochs:
        epoch = int(epochs[max(epochs)])
    lines = [f"NEST pretraining summary: {run_dir}"]
    lines.append(f"  audio used:   training {s_tr / 3600:.3f} h ({n_tr} windows, {spk_tr} speakers); "
                 f"validation {s_va / 3600:.3f} h ({n_va} windows, {spk_va} held-out speakers)")
    lines.append(f"  steps:        {step}" + (f" (epoch {epoch})" if epoch is not None else ""))
    if train_loss:
        last = max(train_loss)
        lines.append(f"  train_loss:   {train_loss[last]:.4f} at step {last} (first logged: "
                     f"{train_loss[min(train_loss)]:.4f} at step {min(train_loss)})")
    if val_loss:
        last = max(val_loss)
        best = min(val_loss, key=val_loss.get)
        lines.append(f"  val_loss:     {val_loss[last]:.4f} at step {last} (final); best {val_loss[best]:.4f} "
                     f"at step {best}")
    else:
        lines.append("  val_loss:     none logged")
    if checkpoint:
        lines.append(f"  checkpoint:   {checkpoint}")
    for name in ("model.nemo", "encoder.ckpt"):
        p = os.path.join(run_dir, "export", name)
        if os.path.exists(p):
            lines.append(f"  exported:     {p} ({os.path.getsize(p) / 2**20:.1f} MiB)")
    plots = sorted(glob.glob(os.path.join(run_dir, "**", "*.png"), recursive=True), key=os.path.getmtime)
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
        print(_last_checkpoint(a.run_dir))
    else:
        print(summary(a.run_dir, a.train_cuts, a.val_cuts, a.checkpoint))
    return 0


if __name__ == "__main__":
    sys.exit(main())
