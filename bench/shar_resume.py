"""Resume cost of an iterable (Shar) training stream at several depths: the time from iter(loader) to the first
batch when the stream has to skip N batches it gave before a checkpoint (nest_ssl.data.ResumableIterable), against
N = 0 in the same run. The skip runs the sampler only (Shar members are read, no audio is decoded, no augmentation).

    python bench/shar_resume.py SHAR_DIR [--depths 10,100] [--batch-size 3] [--repeats 3]
"""

import argparse
import sys
import time

from omegaconf import OmegaConf


def first_batch_time(shar: str, skip: int, batch_size: int, bucketing: bool) -> float:
    from nest_ssl.data import build_dataloader

    cfg = OmegaConf.create({"manifest_filepath": shar, "batch_size": batch_size, "num_workers": 0,
                            "use_bucketing": bucketing, "bucket_duration_bins": [2.0, 2.5] if bucketing else None})
    loader = build_dataloader(cfg, seed=0, rank=0, world_size=1, training=True)
    loader.dataset.resume = {"offset": 0, "skip": {0: skip}} if skip else None
    t0 = time.perf_counter()
    batch = next(iter(loader))
    dt = time.perf_counter() - t0
    assert batch.stream["batches"] == skip + 1
    return dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shar")
    p.add_argument("--depths", default="10,100")
    p.add_argument("--batch-size", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bucketing", action="store_true")
    a = p.parse_args(argv)
    depths = [0] + [int(x) for x in a.depths.split(",")]
    base = None
    for n in depths:
        best = min(first_batch_time(a.shar, n, a.batch_size, a.bucketing) for _ in range(a.repeats))
        base = best if base is None else base
        print(f"skip {n:5d} batches ({n * a.batch_size:6d} cuts): first batch after {best * 1000:8.1f} ms "
              f"({(best - base) * 1000 / max(1, n):6.2f} ms per skipped batch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
