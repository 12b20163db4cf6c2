"""Resume cost of an iterable (Shar) training stream at several depths into an epoch: the time from iter(loader) to
the first batch when the stream resumes after N batches (nest_ssl.data.ResumableIterable), against N = 0 in the
same run. "window" is the resume from a checkpoint's (window, batches in it): the shards of earlier windows are not
opened and the window is replayed from its cuts files only, so the cost stays flat in N. "from start" is what an
older checkpoint (batch count only) gets: the replay of all N batches, from the cuts files only, growing with N.

    python bench/shar_resume.py [SHAR_DIR] [--depths 10,100,400] [--batch-size 3] [--repeats 3]

Without SHAR_DIR a corpus is written to a temporary folder (--shards x --shard-size one-second cuts, 8 kHz FLAC
Shar through `export_shar`).
"""

import argparse
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from omegaconf import OmegaConf


def make_shar(root: Path, shards: int, shard_size: int, sr: int = 8000) -> Path:
    import numpy as np
    import soundfile as sf
    from lhotse import CutSet, Recording

    from nest_ssl.prepare.shar import export_shar

    rng = np.random.default_rng(0)
    cuts = []
    for i in range(shards * shard_size):
        path = root / f"u{i:05d}.wav"
        sf.write(str(path), (0.1 * rng.standard_normal(int((0.8 + 0.4 * rng.random()) * sr))).astype("float32"), sr)
        cuts.append(Recording.from_file(path, recording_id=f"u{i:05d}").to_cut())
    CutSet.from_cuts(cuts).to_file(root / "cuts.jsonl.gz")
    export_shar(root / "cuts.jsonl.gz", root / "shar", shard_size=shard_size, seed=0)
    return root / "shar"


def loader_for(shar: str, a):
    from nest_ssl.data import build_dataloader

    cfg = OmegaConf.create({"manifest_filepath": shar, "batch_size": a.batch_size, "num_workers": 0,
                            "sample_rate": a.sample_rate, "use_bucketing": a.bucketing,
                            "bucket_duration_bins": [0.9, 1.0, 1.1] if a.bucketing else None,
                            "stream_window_shards": a.window_shards})
    return build_dataloader(cfg, sample_rate=a.sample_rate, seed=0, rank=0, world_size=1, training=True)


def first_batch_time(shar: str, a, at: dict, windowed: bool) -> float:
    loader = loader_for(shar, a)
    if at is not None:
        loader.dataset.resume = {"offset": 0, "skip": {0: at["batches"]}}
        if windowed:
            loader.dataset.resume["at"] = {0: [at["window"], at["in_window"]]}
    t0 = time.perf_counter()
    batch = next(iter(loader))
    dt = time.perf_counter() - t0
    assert batch.stream["batches"] == (at["batches"] if at else 0) + 1
    return dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shar", nargs="?")
    p.add_argument("--depths", default="10,100,400")
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bucketing", action="store_true")
    p.add_argument("--window-shards", type=int, default=None, help="stream_window_shards (default: the library's)")
    p.add_argument("--shards", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=25)
    p.add_argument("--sample-rate", type=int, default=8000)
    a = p.parse_args(argv)
    depths = [int(x) for x in a.depths.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        shar = a.shar
        if shar is None:
            t0 = time.perf_counter()
            shar = str(make_shar(Path(tmp), a.shards, a.shard_size, a.sample_rate))
            print(f"wrote {a.shards} shards x {a.shard_size} cuts to {shar} in {time.perf_counter() - t0:.1f} s")
        # Each depth's stream position, as a checkpoint would record it.
        tags = [b.stream for b in islice(iter(loader_for(shar, a)), max(depths))]
        first_batch_time(shar, a, None, True)  # warm-up: imports, page cache
        base = min(first_batch_time(shar, a, None, True) for _ in range(a.repeats))
        print(f"no resume: first batch after {base * 1000:8.1f} ms")
        for n in depths:
            at = tags[n - 1]
            win = min(first_batch_time(shar, a, at, True) for _ in range(a.repeats))
            old = min(first_batch_time(shar, a, at, False) for _ in range(a.repeats))
            print(f"resume after {n:5d} batches ({n * a.batch_size:6d} cuts; window {at['window']:3d}, "
                  f"{at['in_window']:3d} batches in it): window {win * 1000:7.1f} ms ({(win - base) * 1000:+7.1f}), "
                  f"from start {old * 1000:7.1f} ms ({(old - base) * 1000:+7.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
