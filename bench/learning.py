#!/usr/bin/env python3
"""Does NEST learn? Small controlled pretraining runs, one change at a time, against the context-free floor.

A bare loop over NESTModel (no trainer, no sampler: nothing between the model and the figures): fixed chunks of
clean speech, the model's own masking and quantizer, AdamW with linear warm-up and then a constant rate (or NeMo's
Noam), and every --eval-every steps the masked-token loss and top-1 accuracy on held-out chunks with fixed masks,
beside the floor (the entropy of those chunks' masked targets: the best loss of a model that ignores its input).

  bench/learning.py --overfit 8                 # can a small model fit 8 utterances below the floor at all?
  bench/learning.py --corpus data/corpus        # pretrain on a LibriLight-format folder, validate on held-out files
  bench/learning.py ... --override model.masking.block_size=16 --override model.num_classes=256

Each run prints one line per evaluation and a final `RESULT` line (JSON) with the figures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nest_ssl.config import load_config  # noqa: E402
from nest_ssl.models import NESTModel  # noqa: E402
from nest_ssl.modules.loss import fit_tokens  # noqa: E402


def load_chunks(paths: list[Path], seconds: float, limit: int | None) -> list[torch.Tensor]:
    chunks = []
    n = int(seconds * 16000)
    for p in paths:
        x, sr = sf.read(str(p), dtype="float32")
        assert sr == 16000, p
        if len(x) <= n:
            chunks.append(torch.from_numpy(x))
        else:
            for a in range(0, len(x) - n // 2, n):
                chunks.append(torch.from_numpy(x[a:a + n]))
        if limit and len(chunks) >= limit:
            return chunks[:limit]
    return chunks


def batch_of(chunks: list[torch.Tensor]):
    lens = torch.tensor([len(c) for c in chunks])
    audio = torch.zeros(len(chunks), int(lens.max()))
    for i, c in enumerate(chunks):
        audio[i, :len(c)] = c
    return audio, lens


def masked_stats(model: NESTModel, audio, lens, mask_seed: int | None):
    """(loss, accuracy, masked targets, all valid targets) on one batch with masks from `mask_seed`."""
    if mask_seed is not None:
        torch.manual_seed(mask_seed)
    encoded, enc_len, masks, tokens = model.encode(input_signal=audio, input_signal_length=lens, apply_mask=True)
    selected = model.loss.token_mask(masks)
    picked = encoded.transpose(1, 2)[selected]
    log_probs = model.decoder(encoder_output=picked.t().unsqueeze(0))[0]
    if log_probs.dim() == 3:
        log_probs = log_probs[..., 0]
    targets = fit_tokens(tokens, selected.shape[1])[selected]
    if targets.dim() == 2:
        targets = targets[:, 0]
    loss = torch.nn.functional.nll_loss(log_probs, targets)
    acc = (log_probs.argmax(-1) == targets).float().mean()
    valid = torch.arange(selected.shape[1])[None, :] < enc_len[:, None]
    every = fit_tokens(tokens, selected.shape[1])[valid].reshape(-1)
    return loss, acc, targets, every


def entropy(counts: torch.Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log()).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="LibriLight-format folder (or any folder of .flac)")
    ap.add_argument("--labelled", help="labelled set folder (train.jsonl.gz's audio) for --overfit")
    ap.add_argument("--overfit", type=int, default=0, help="train and evaluate on these N chunks")
    ap.add_argument("--chunk-seconds", type=float, default=6.0)
    ap.add_argument("--val-files", type=int, default=6, help="files held out for validation (--corpus)")
    ap.add_argument("--config-name", default="nest_tiny")
    ap.add_argument("--override", action="append", default=[])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (--sched const)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--sched", choices=["const", "noam"], default="const", help="noam: the config's own optim")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save", help="write the final state dict here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)

    cfg = load_config(config_name=a.config_name, overrides=["model.train_ds.manifest_filepath=x",
                                                            "model.validation_ds.manifest_filepath=x", *a.override])
    model = NESTModel.from_config(cfg.model)
    model.train()
    if a.overfit:
        root = Path(a.labelled or a.corpus)
        files = sorted(root.rglob("*.flac"))
        train = load_chunks(files, a.chunk_seconds, a.overfit)
        val = train
    else:
        files = sorted(Path(a.corpus).rglob("*.flac"))
        rng = random.Random(0)
        rng.shuffle(files)
        val = load_chunks(files[:a.val_files], a.chunk_seconds, None)
        train = load_chunks(files[a.val_files:], a.chunk_seconds, None)
    val_audio, val_lens = batch_of(val)
    print(f"# {len(train)} training chunks ({sum(len(c) for c in train) / 16000 / 3600:.2f} h), {len(val)} validation "
          f"chunks; {model.num_weights:,} weights; overrides {a.override}", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    if a.sched == "noam":
        from nest_ssl.optim import build_optimizer, build_scheduler

        opt = build_optimizer(params, cfg.model.optim)
        sched = build_scheduler(opt, cfg.model.optim.sched, max_steps=a.steps)
    else:
        opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.98), weight_decay=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, a.warmup)))

    def evaluate():
        model.eval()
        with torch.no_grad():
            losses, accs, counts, n = 0.0, 0.0, torch.zeros(model.quantizer.num_classes), 0
            unigram = ((train_counts + 0.5) / (train_counts.sum() + 0.5 * len(train_counts))).log()
            xent = 0.0
            for i in range(0, len(val), 16):
                loss, acc, tgt, _ = masked_stats(model, val_audio[i:i + 16], val_lens[i:i + 16], 1000 + i)
                xent -= float(unigram[tgt].sum())
                k = len(tgt)
                losses += float(loss) * k
                accs += float(acc) * k
                n += k
                counts += torch.bincount(tgt, minlength=len(counts)).float()
        model.train()
        return losses / n, accs / n, entropy(counts), float(counts.max() / counts.sum()), xent / n

    t0 = time.time()
    history = []
    order = []
    run_loss = run_acc = 0.0
    train_counts = torch.zeros(model.quantizer.num_classes)
    for step in range(1, a.steps + 1):
        if len(order) < a.batch:
            order += random.sample(range(len(train)), len(train))
        idx, order = order[:a.batch], order[a.batch:]
        audio, lens = batch_of([train[i] for i in idx])
        loss, acc, _, every = masked_stats(model, audio, lens, None)
        train_counts += torch.bincount(every, minlength=len(train_counts)).float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        run_loss = 0.9 * run_loss + 0.1 * loss.item() if step > 1 else loss.item()
        run_acc = 0.9 * run_acc + 0.1 * acc.item() if step > 1 else acc.item()
        if step % a.eval_every == 0 or step == a.steps:
            vl, va, floor, majority, unigram_floor = evaluate()
            history.append({"step": step, "train_loss": run_loss, "train_acc": run_acc, "val_loss": vl,
                            "val_acc": va, "floor": floor, "unigram_floor": unigram_floor, "majority": majority})
            print(f"step {step:5d}  train {run_loss:.3f} acc {run_acc:.3f}  val {vl:.3f} (plug-in floor {floor:.3f}, "
                  f"unigram floor {unigram_floor:.3f}, {vl - unigram_floor:+.3f}) acc {va:.3f} (majority "
                  f"{majority:.3f})  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{time.time() - t0:.0f}s", flush=True)
    if a.save:
        torch.save(model.state_dict(), a.save)
    last = history[-1]
    print("RESULT " + json.dumps({"overrides": a.override, "lr": a.lr, "steps": a.steps, "batch": a.batch,
                                  "seconds": round(time.time() - t0, 1), **{k: round(v, 4) for k, v in last.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
