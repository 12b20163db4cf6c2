#!/usr/bin/env python3
"""The end of a recipe: which checkpoint to export, and the summary of a run.

  summary.py last-checkpoint RUN_DIR
      prints the newest last checkpoint in RUN_DIR/checkpoints (the one training resumes from)
  summary.py train-status RUN_DIR
      prints how the last training run in RUN_DIR ended, from RUN_DIR/train_status.json (which global rank 0
      writes when a run ends without an error; nest_ssl/train/run_status.py): "EXIT_CODE STATUS STOP_REASON STEP",
      e.g. "0 finished max_steps 2000" or "75 resumable preempted 812"; "none" when there is no such file (the
      run crashed or was killed, or another run started since)
  summary.py summary RUN_DIR --train-cuts CUTS --val-cuts CUTS [--checkpoint CKPT]
      prints hours of audio used (training and validation windows, speakers), steps and epochs, the final
      train_loss and val_loss (from RUN_DIR/metrics.jsonl, which the trainer writes beside TensorBoard's events),
      the learning-health figures (val_loss against the context-free floor, masked accuracy against chance,
      codebook use, any collapse alarm), the throughput (audio s/s, tokens/s, TFLOP/s, MFU, data wait and padding
      shares), and where the exported models and the loss plot are.

Standard library only (reads JSON lines; the step is in the checkpoint's name), so it costs no torch import.
"""

import argparse
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from split_by_speaker import iter_cuts, speaker_of  # noqa: E402  (also puts this checkout's nest_ssl on the path)

from nest_ssl.cli.guard import run_guarded  # noqa: E402
from nest_ssl.errors import UserError  # noqa: E402


def last_checkpoint(run_dir: str) -> str:
    """Newest `*last.ckpt` (the trainer writes them atomically, so a file with that name is complete)."""
    found = [p for p in glob.glob(os.path.join(run_dir, "checkpoints", "*last.ckpt"))
             if not os.path.basename(p).startswith(".")]
    if not found:
        raise UserError(f"summary.py: no *last.ckpt in {run_dir}/checkpoints; run the training stage first")
    return max(found, key=os.path.getmtime)


STATUS_FILE = "train_status.json"  # nest_ssl.train.run_status.STATUS_FILE (imported there, it would cost torch)


def train_status(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, STATUS_FILE), encoding="utf-8") as f:
            record = json.load(f)
        return (f"{int(record['exit_code'])} {record['status']} {record.get('stop_reason') or 'none'} "
                f"{int(record.get('global_step', -1))}")
    except (OSError, ValueError, KeyError, TypeError):
        return "none"


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
    for key in ("train_loss", "val_loss", "epoch") + HEALTH_KEYS + THROUGHPUT_KEYS:
        out[key] = {int(r["step"]): float(r[key]) for r in rows if isinstance(r.get(key), (int, float))}
    return out


# The trainer's learning-health scalars (docs/training.md, "Learning health").
HEALTH_KEYS = ("val_floor", "val_loss_minus_floor", "val_floor_tokens", "val_acc", "val_chance_majority",
               "masked_acc", "chance_majority", "chance_uniform", "cum_target_coverage", "cum_target_perplexity",
               "cum_target_tokens", "collapse_alarm", "alarm_at_floor", "alarm_low_coverage")


# The trainer's throughput telemetry (docs/training.md, "Throughput telemetry"), each over its log window.
THROUGHPUT_KEYS = ("audio_per_s", "tokens_per_s", "tflops_per_device", "mfu", "data_wait_share", "padding_share",
                   "train_time")


def run_throughput(m) -> dict:
    """Each throughput figure over the whole run: the logged windows' values weighted by their training time (so
    audio_per_s is all the audio over all the training time); a figure never logged is left out."""
    weights = m["train_time"]
    out = {}
    for key in THROUGHPUT_KEYS[:-1]:
        steps = [s for s in m[key] if s in weights]
        total = sum(weights[s] for s in steps)
        if steps and total > 0:
            out[key] = sum(m[key][s] * weights[s] for s in steps) / total
    return out


def throughput_lines(m) -> list:
    t = run_throughput(m)
    if "audio_per_s" not in t:
        return []
    line = f"  throughput:   {t['audio_per_s']:.1f} audio s/s, {t['tokens_per_s']:.0f} tokens/s"
    if "tflops_per_device" in t:
        line += f", {t['tflops_per_device']:.3g} model TFLOP/s per device"
    line += f", MFU {100 * t['mfu']:.1f}%" if "mfu" in t else ", MFU n/a (no dense peak known for the device)"
    return [line, f"                data wait {100 * t['data_wait_share']:.1f}% of step time, padding "
                  f"{100 * t['padding_share']:.1f}% of computed samples (training-time weighted over the run)"]


def _last(series):
    """(step, value) of the latest logged step, or None."""
    return (max(series), series[max(series)]) if series else None


def floor_patience(run_dir: str):
    """nest_trainer.health.floor_patience_steps as the run resolved it (hparams.yaml), or None when not recorded."""
    try:
        with open(os.path.join(run_dir, "hparams.yaml"), encoding="utf-8") as f:
            found = re.search(r"^\s*floor_patience_steps:\s*(-?\d+)\s*$", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def health_lines(m, patience=None) -> list:
    """val_loss against the floor, masked accuracy against chance, codebook use, and the alarms."""
    lines = []
    gap, floor, n = _last(m["val_loss_minus_floor"]), _last(m["val_floor"]), _last(m["val_floor_tokens"])
    if gap and floor:
        verdict = ("below it: the model uses its input" if gap[1] < 0 else
                   "not below it: no better than ignoring the input")
        lines.append(f"  vs floor:     val_loss - floor = {gap[1]:+.4f} at step {gap[0]} ({verdict}; floor "
                     f"{floor[1]:.4f} nats" + (f" from {int(n[1])} validation tokens)" if n else ")"))
    acc, maj, uni = _last(m["masked_acc"]), _last(m["chance_majority"]), _last(m["chance_uniform"])
    if acc:
        chance = ", ".join(x for x in ((f"majority {maj[1]:.4f}" if maj else ""),
                                        (f"uniform {uni[1]:.2g}" if uni else "")) if x)
        lines.append(f"  masked acc:   train {acc[1]:.4f} at step {acc[0]} (chance: {chance})")
    vacc, vmaj = _last(m["val_acc"]), _last(m["val_chance_majority"])
    if vacc:
        lines.append(f"                validation {vacc[1]:.4f} at step {vacc[0]}"
                     + (f" (chance: majority {vmaj[1]:.4f})" if vmaj else ""))
    cov, ppl, tok = _last(m["cum_target_coverage"]), _last(m["cum_target_perplexity"]), _last(m["cum_target_tokens"])
    if cov:
        lines.append(f"  codebook:     {100 * cov[1]:.1f}% of the codes used since step 0"
                     + (f", perplexity {ppl[1]:.1f}" if ppl else "") + (f" over {int(tok[1])} tokens" if tok else ""))
    alarms = []
    for key, what in (("alarm_at_floor", "val_loss is not below the context-free floor"),
                      ("alarm_low_coverage", "the targets use few of the codes")):
        fired = sorted(step for step, v in m[key].items() if v > 0)
        if fired:
            now = "still on" if m[key][max(m[key])] > 0 else f"cleared by step {max(m[key])}"
            alarms.append(f"{what} (from step {fired[0]}, {now})")
    if alarms:
        lines.append("  ALARM:        " + "; ".join(alarms) + " (see the COLLAPSE ALARM lines of the log)")
    elif m["collapse_alarm"]:
        since = f"step {patience}" if patience is not None else "nest_trainer.health.floor_patience_steps (2000 by default)"
        lines.append(f"  alarms:       none (the floor alarm judges validations from {since} on)")
    return lines


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
    lines.extend(health_lines(m, floor_patience(run_dir)))
    lines.extend(throughput_lines(m))
    if checkpoint:
        lines.append(f"  checkpoint:   {checkpoint}")
    for name in ("model.nemo", "encoder.ckpt"):
        p = os.path.join(run_dir, "export", name)
        if os.path.exists(p):
            lines.append(f"  exported:     {p} ({os.path.getsize(p) / 2**20:.1f} MiB)")
    plots = sorted(glob.glob(os.path.join(run_dir, "*.png")), key=os.path.getmtime)
    lines.append(f"  loss plot:    {plots[-1] if plots else 'not found'}")
    return "\n".join(lines)


def _main(argv) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    lc = sub.add_parser("last-checkpoint")
    lc.add_argument("run_dir")
    ts = sub.add_parser("train-status")
    ts.add_argument("run_dir")
    s = sub.add_parser("summary")
    s.add_argument("run_dir")
    s.add_argument("--train-cuts", required=True)
    s.add_argument("--val-cuts", required=True)
    s.add_argument("--checkpoint")
    a = p.parse_args(argv)
    if a.what == "last-checkpoint":
        print(last_checkpoint(a.run_dir))
    elif a.what == "train-status":
        print(train_status(a.run_dir))
    else:
        print(summary(a.run_dir, a.train_cuts, a.val_cuts, a.checkpoint))
    return 0


def main(argv=None) -> int:
    """User errors: one line `nest-ssl: error: ...`, exit 2 (--debug or NEST_SSL_DEBUG=1: with the traceback)."""
    return run_guarded(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
