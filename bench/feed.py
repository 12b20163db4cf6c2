#!/usr/bin/env python
"""Keeping a GPU fed: loader throughput per core from Shar, the GPU's demand from counted FLOPs, cores per GPU.

    .venv/bin/python bench/feed.py [--hours 0.3] [--rounds 3] [--flop-seconds 4 16] [--out bench/out/feed]

Corpus: bench/dataloader.py's 10 s 16 kHz FLACs cut from the real clips in shared/fixtures/real_audio, plus its noise
set (12 x 30 s WAV), exported with `nest-ssl shar export` as FLAC Shar and as WAV Shar (cached under --out; the disk
cost of each is printed), and the noise set as a noise bank (`nest-ssl noise bank`).

Loader paths, each in this process with num_workers=0 and one thread; the rate of one core is audio seconds per CPU
second of this process (time.process_time: robust to other processes on a shared machine):

  plain FLAC / plain WAV   tarfile + soundfile.read of every audio member of the Shar tars: the decode floor
  ours ...                 nest_ssl.data.build_dataloader over the Shar folder, batch 16, NEST's augmentation
                           (prob 0.5, noise_ratio 0.5, the NEST yaml's ranges), noise from the files or the bank;
                           "worker aug": the loader mixes (what a DataLoader worker does);
                           "device aug": the loader only decodes and cuts, plus the host part of DeviceAugment (plans,
                           noise slices from the bank); the mixing itself runs on the GPU and is timed apart below

Rounds are interleaved (a slow phase of the shared machine hits every path alike) and each figure is the best round.

Demand: FLOPs of one NEST-L training step (forward with masking, loss, backward; nest_large config) counted with
torch.utils.flop_counter.FlopCounterMode (nest_ssl.models.flops, which fixes two miscounts of torch's counter) on
one utterance of each --flop-seconds length, per audio second; an
H100/H200 (dense bf16 peak 989 TFLOP/s) at 40% MFU eats 0.4 x 989e12 / FLOPs-per-audio-second audio s per second.
Cores to feed it: demand / (the fastest of our augmented paths, per core), rounded up. The last line is
`cores to feed one H100 at 40% MFU: N` (the demand at the longest --flop-seconds: the recipe's windows are 5-30 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import os
import sys
import tarfile
import time
from pathlib import Path

import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SR = 16000
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak, FLOP/s (SXM)
MFU = 0.4


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _uptime() -> str:
    try:
        return "load average " + " ".join(open("/proc/loadavg").read().split()[:3]) + f" on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


def _export(manifest: str, out: Path, fmt: str) -> None:
    if (out / "cuts.000000.jsonl.gz").exists():
        return
    import subprocess

    p = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "shar", "export", manifest, str(out), "--audio-format",
                        fmt, "--shard-size", "50"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    print(f"  shar export --audio-format {fmt}: {p.stdout.strip().splitlines()[-1]}")


def _tar_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("recording.*.tar"))


def plain_decode(shar: Path) -> float:
    """Audio seconds decoded from every audio member of the Shar tars (soundfile, float32)."""
    samples = 0
    for tar_path in sorted(shar.glob("recording.*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.name.endswith((".flac", ".wav")):
                    continue
                x, _ = sf.read(io.BytesIO(tar.extractfile(member).read()), dtype="float32")
                samples += x.shape[0]
    return samples / SR


def ours(cfg: dict, device_transform: bool) -> tuple[float, float, float]:
    """(audio seconds, CPU seconds of the pass, CPU seconds in DeviceAugment.apply) of one pass of
    build_dataloader's loader (built before the clock starts: once per run in training)."""
    from nest_ssl.data import build_dataloader

    loader = build_dataloader(cfg, sample_rate=SR, seed=0)
    samples, apply_s = 0, 0.0
    transform = loader.batch_transform
    t0 = time.process_time()
    for batch in loader:
        if transform is not None:
            plans, clips = transform.host_part(batch)  # host work: counted
            if device_transform:
                t1 = time.process_time()
                transform.apply(batch, plans, clips, "cpu")  # the GPU's work: timed apart
                apply_s += time.process_time() - t1
        samples += int(batch.audio_len.sum())
    return samples / SR, time.process_time() - t0 - apply_s, apply_s


def count_flops(seconds: float) -> float:
    """FLOPs of one NEST-L training step on one utterance of `seconds` s, per audio second (nest_ssl.models.flops:
    FlopCounterMode, with oneDNN linears counted and grouped-convolution gradients counted right)."""
    from types import SimpleNamespace

    from nest_ssl.models.flops import step_flops

    ms = _bench_module("model_step")
    model = ms.build("ours")
    model.train()
    audio, lengths, noisy = ms.make_batch(1, seconds)
    batch = SimpleNamespace(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths)
    return step_flops(model, batch) / seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--flop-seconds", type=float, nargs="+", default=[4.0, 16.0])
    ap.add_argument("--flops-per-audio-second", type=float, default=None,
                    help="skip the count and use this figure (e.g. from an earlier run)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "feed"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print(f"machine: {_uptime()} (start); one process, one thread, num_workers=0")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dl = _bench_module("dataloader")
    manifest, noise_manifest, files = dl.make_corpus(out, args.hours)
    print(f"corpus: {len(files)} x 10 s FLAC = {len(files) * 10 / 3600:.2f} h in {out}")
    shar = {fmt: out / f"shar_{fmt}_{len(files)}" for fmt in ("flac", "wav")}  # per corpus size
    for fmt, d in shar.items():
        _export(manifest, d, fmt)
    flac_b, wav_b = _tar_bytes(shar["flac"]), _tar_bytes(shar["wav"])
    print(f"disk: FLAC Shar {flac_b / 1e6:.1f} MB, WAV Shar {wav_b / 1e6:.1f} MB: WAV costs {wav_b / flac_b:.2f} x "
          "the disk of FLAC")
    bank = out / "noise_bank"
    if not (bank / "noise_bank.json").exists():
        from nest_ssl.data.noise_bank import build_noise_bank

        build_noise_bank(noise_manifest, bank, sample_rate=SR)
    for d in shar.values():  # warm the page cache
        for p in d.glob("*"):
            p.read_bytes()

    aug = dict(dl.NEST_AUG)
    base = {"sample_rate": SR, "batch_size": args.batch_size, "shuffle": True, "force_finite": True,
            "num_workers": 0, "batch_augmentor": aug}
    flac, wav = str(shar["flac"]), str(shar["wav"])
    paths = {
        "plain FLAC (soundfile)": ("plain", shar["flac"]),
        "plain WAV (soundfile)": ("plain", shar["wav"]),
        "ours FLAC, no aug": ("ours", {**base, "manifest_filepath": flac, "batch_augmentor": None}),
        "ours FLAC, worker aug, noise files": ("ours", {**base, "manifest_filepath": flac,
                                                         "noise_manifest": noise_manifest}),
        "ours FLAC, worker aug, noise bank": ("ours", {**base, "manifest_filepath": flac, "noise_manifest": str(bank)}),
        "ours FLAC, device aug, noise bank": ("ours", {**base, "manifest_filepath": flac, "noise_manifest": str(bank),
                                                        "augment_on": "device"}),
        "ours WAV, worker aug, noise bank": ("ours", {**base, "manifest_filepath": wav, "noise_manifest": str(bank)}),
        "ours WAV, device aug, noise bank": ("ours", {**base, "manifest_filepath": wav, "noise_manifest": str(bank),
                                                       "augment_on": "device"}),
    }
    best = {k: 0.0 for k in paths}
    apply_rate = {}
    for _ in range(args.rounds):
        for name, (kind, what) in paths.items():
            if kind == "plain":
                t0 = time.process_time()
                audio_s = plain_decode(what)
                cpu, apply_s = time.process_time() - t0, 0.0
            else:
                audio_s, cpu, apply_s = ours(what, device_transform=what.get("augment_on") == "device")
            best[name] = max(best[name], audio_s / cpu)
            if apply_s:
                apply_rate[name] = max(apply_rate.get(name, 0.0), audio_s / apply_s)
    print(f"loader throughput per core (audio s / CPU s, best of {args.rounds} interleaved rounds; {_uptime()}):")
    for name, rate in best.items():
        plain = best["plain WAV (soundfile)" if " WAV" in name else "plain FLAC (soundfile)"]
        print(f"  {name:40s} {rate:9.0f}   x{rate / best['plain FLAC (soundfile)']:.2f} of plain FLAC"
              f"   x{rate / plain:.2f} of plain decoding of its format")
    for name, rate in apply_rate.items():
        print(f"  ({name}: the mixing itself, run here on the CPU instead of the GPU: {rate:.0f} audio s / CPU s)")

    if args.flops_per_audio_second:
        per_s = {max(args.flop_seconds): args.flops_per_audio_second}
    else:
        per_s = {}
        for seconds in args.flop_seconds:
            t0 = time.perf_counter()
            per_s[seconds] = count_flops(seconds)
            print(f"NEST-L training step (forward + backward), counted with FlopCounterMode on 1 x {seconds:g} s: "
                  f"{per_s[seconds] / 1e9:.2f} GFLOP per audio second [{time.perf_counter() - t0:.0f} s]")
    ours_aug = {k: v for k, v in best.items() if k.startswith("ours") and "no aug" not in k}
    fastest = max(ours_aug, key=ours_aug.get)
    flops = per_s[max(per_s)]
    for gpu, peak in PEAK_BF16.items():
        demand = MFU * peak / flops
        print(f"{gpu} at {MFU:.0%} MFU ({peak / 1e12:.0f} TFLOP/s dense bf16): {demand:,.0f} audio s / s at "
              f"{flops / 1e9:.2f} GFLOP per audio s ({max(per_s):g} s utterances)")
    demand = MFU * PEAK_BF16["H100"] / flops
    for name, rate in ours_aug.items():
        print(f"  cores for {name}: {demand / rate:.1f}")
    print(f"machine: {_uptime()} (end)")
    print(f"fastest augmented path: {fastest} ({ours_aug[fastest]:.0f} audio s / s per core)")
    print(f"cores to feed one H100 at 40% MFU: {math.ceil(demand / ours_aug[fastest])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
