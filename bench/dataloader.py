#!/usr/bin/env python
"""Dataloader throughput: audio seconds per wall second, against plain soundfile decoding in the same run.

    .venv/bin/python bench/dataloader.py [--hours 1.0] [--workers 0 2] [--rounds 3] [--out bench/out/dataloader]

Generates (once, cached under --out) a corpus of 10 s 16 kHz FLAC files cut from the real speech clips in
shared/fixtures/real_audio (random excerpts, gains and speeds, so no two files are equal) plus a small noise
set, with NeMo JSON manifests. Then, for each num_workers value, measures:

  (a) plain soundfile decoding of the same files in the same batches (a DataLoader whose dataset only calls
      soundfile.read), the baseline;
  (b) nest_ssl.data.build_dataloader without augmentation (lhotse reading, checks, collation);
  (c) build_dataloader with NEST's batch augmentation (prob 0.5, noise_ratio 0.5, ...) and the noise set;

and prints audio s / wall s for each and the ratios b/a and c/a (target c/a >= 0.5). Each figure is the best
of --rounds passes (the machine is shared, the best pass is the least disturbed one); the page cache is warmed
first so that no configuration pays for the first disk read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nest_ssl.data import build_dataloader  # noqa: E402

SR = 16000
CUT_SECONDS = 10.0
FIXTURES = Path(os.environ.get("NEST_REAL_AUDIO", "/work/shared/fixtures/real_audio"))
NEST_AUG = dict(
    _target_="nemo.collections.asr.modules.ssl_modules.MultiSpeakerNoiseAugmentation",
    prob=0.5, noise_ratio=0.5, min_r_speech=-5.0, max_r_speech=5.0, min_r_noise=-5.0, max_r_noise=20.0,
    min_mix_rate=0.5, max_mix_rate=0.5, min_num_segments=1, max_num_segments=1, min_num_speakers=1,
    max_num_speakers=1,
)


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == SR:
        return x
    import torchaudio.functional as F  # resampling only; files are read with soundfile

    return F.resample(torch.from_numpy(x), sr, SR).numpy()


def _speech_pool() -> np.ndarray:
    clips = []
    for name in ("2412-153948-0000.flac", "2412-153948-0001.flac", "LJ002-0020.wav", "common_voice_en_651325.mp3"):
        path = FIXTURES / name
        if not path.exists():
            continue
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        clips.append(_resample(x, sr) / (np.abs(x).max() + 1e-9) * 0.5)
    if not clips:
        raise SystemExit(f"no real speech clips under {FIXTURES}; set NEST_REAL_AUDIO")
    return np.concatenate(clips).astype(np.float32)


def make_corpus(out: Path, hours: float) -> tuple[str, str, list[str]]:
    """10 s FLACs from the real clips; returns (speech manifest, noise manifest, file list)."""
    corpus = out / "corpus"
    manifest, noise_manifest = out / "train.json", out / "noise.json"
    n_files = int(round(hours * 3600 / CUT_SECONDS))
    files = [str(corpus / f"utt{i:05d}.flac") for i in range(n_files)]
    noise_files = [corpus / f"noise{k:02d}.wav" for k in range(12)]
    if manifest.exists() and noise_manifest.exists() and all(os.path.exists(f) for f in files + noise_files):
        return str(manifest), str(noise_manifest), files
    corpus.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pool = _speech_pool()
    n = int(CUT_SECONDS * SR)
    with open(manifest, "w") as f:
        for path in files:
            speed = rng.uniform(0.9, 1.1)
            need = int(n * speed) + 1
            start = int(rng.integers(0, max(1, pool.size - need)))
            seg = np.resize(pool[start:], need) if pool.size - start < need else pool[start : start + need]
            # Speed change by linear interpolation: different pitch/tempo per file, cheap to generate.
            seg = np.interp(np.arange(n) * speed, np.arange(seg.size), seg).astype(np.float32)
            seg = seg * rng.uniform(0.3, 1.0) + 0.002 * rng.standard_normal(n).astype(np.float32)
            sf.write(path, seg, SR, format="FLAC", subtype="PCM_16")
            f.write(json.dumps({"audio_filepath": os.path.relpath(path, out), "duration": CUT_SECONDS}) + "\n")
    with open(noise_manifest, "w") as f:
        for k in range(12):  # 12 noise files of 30 s: coloured noise, hum and babble
            m = 30 * SR
            white = rng.standard_normal(m).astype(np.float32)
            kind = k % 3
            if kind == 0:
                x = np.cumsum(white) / 200.0
                x -= np.convolve(x, np.ones(400) / 400, mode="same")
            elif kind == 1:
                t = np.arange(m) / SR
                x = 0.3 * np.sin(2 * np.pi * (50 + 10 * k) * t) + 0.05 * white
            else:
                starts = rng.integers(0, pool.size - m, size=6) if pool.size > m else np.zeros(6, dtype=int)
                x = sum(np.resize(pool[s:], m) for s in starts) / 3.0
            x = (0.3 * x / (np.abs(x).max() + 1e-9)).astype(np.float32)
            # WAV, as MUSAN ships its noise: a random 5 s span of noise-like FLAC costs as much to decode as
            # a 10 s speech file, of WAV a sixth of it.
            path = corpus / f"noise{k:02d}.wav"
            sf.write(str(path), x, SR, subtype="PCM_16")
            f.write(json.dumps({"audio_filepath": os.path.relpath(path, out), "duration": 30.0}) + "\n")
    return str(manifest), str(noise_manifest), files


class SoundfileBaseline(torch.utils.data.Dataset):
    """(a): decode the files of a batch with soundfile and hand the samples over, nothing else (no checks,
    no padding). Handing them over is part of the baseline: with workers, a loader that returned only a count
    would skip the transfer to the training process that any real loader pays."""

    def __getitem__(self, cuts):
        return [torch.from_numpy(sf.read(c.recording.sources[0].source, dtype="float32")[0]) for c in cuts]


def _worker_threads(_):
    torch.set_num_threads(1)


def run_pass(loader) -> tuple[float, float]:
    """(audio seconds, wall seconds) of one full pass."""
    t0 = time.perf_counter()
    samples = 0
    for batch in loader:
        samples += sum(x.numel() for x in batch) if isinstance(batch, list) else int(batch.audio_len.sum())
    return samples / SR, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "dataloader"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest, noise_manifest, files = make_corpus(out, args.hours)
    print(f"corpus: {len(files)} x {CUT_SECONDS:.0f} s FLAC = {len(files) * CUT_SECONDS / 3600:.2f} h "
          f"(+ noise set: 12 x 30 s WAV) in {out} [{time.perf_counter() - t0:.1f} s]")
    for path in files:  # warm the page cache so that no configuration pays for the first read
        with open(path, "rb") as f:
            f.read()

    base = {"manifest_filepath": manifest, "sample_rate": SR, "batch_size": args.batch_size, "shuffle": True}
    configs = {
        "a": None,
        "b": {**base, "batch_augmentor": None, "noise_manifest": None},
        "c": {**base, "batch_augmentor": NEST_AUG, "noise_manifest": noise_manifest},
    }
    results = {}
    for nw in args.workers:
        best = {k: 0.0 for k in configs}
        for _ in range(args.rounds):
            for key, cfg in configs.items():  # interleaved, so slow phases of the machine hit all alike
                if key == "a":
                    ref = build_dataloader({**base, "num_workers": 0}, sample_rate=SR, seed=0)
                    loader = torch.utils.data.DataLoader(
                        SoundfileBaseline(), sampler=ref.sampler, batch_size=None, num_workers=nw,
                        worker_init_fn=_worker_threads if nw else None,
                    )
                else:
                    loader = build_dataloader({**cfg, "num_workers": nw}, sample_rate=SR, seed=0)
                audio_s, wall_s = run_pass(loader)
                best[key] = max(best[key], audio_s / wall_s)
        results[nw] = best
        print(f"num_workers={nw}: (a) soundfile {best['a']:8.0f}  (b) ours, no aug {best['b']:8.0f}  "
              f"(c) ours, NEST aug + noise {best['c']:8.0f}  audio s / wall s")
        print(f"num_workers={nw}: b/a = {best['b'] / best['a']:.2f}   c/a = {best['c'] / best['a']:.2f}"
              f"   (target c/a >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
