"""The tests' small training corpus: recipes/nest/make_dummy_data.py (the README's example data) run in a folder."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAKE_DATA = REPO / "recipes" / "nest" / "make_dummy_data.py"


def make_dummy_data(cwd, num_train: int, num_val: int, min_seconds: float = 1.5, max_seconds: float = 2.5) -> None:
    """Writes cwd/data/dummy_ssl/{train,val}_manifest.json and their wav files (one thread, at most 120 s)."""
    subprocess.run([sys.executable, str(MAKE_DATA), "--num-train", str(num_train), "--num-val", str(num_val),
                    "--min-seconds", str(min_seconds), "--max-seconds", str(max_seconds)], cwd=cwd, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=120)


BUCKET_BINS_LINE = "model.train_ds.bucket_duration_bins=[1.8,2.2]\n"  # suits make_dummy_data's 1.5-2.5 s clips


def make_prepared_data(d: Path, num_train: int, num_val: int, bucket_bins: bool = True) -> None:
    """What the recipes' stages 0-3 (and 5, with bucket_bins) leave for training, from the dummy corpus:
    d/data/cuts/{train,val}.jsonl.gz (and d/data/bucket_bins.txt)."""
    from nest_ssl.data.manifests import open_cutset

    make_dummy_data(d, num_train=num_train, num_val=num_val)
    (d / "data" / "cuts").mkdir(parents=True)
    for split in ("train", "val"):
        open_cutset(str(d / f"data/dummy_ssl/{split}_manifest.json")).to_file(d / f"data/cuts/{split}.jsonl.gz")
    if bucket_bins:
        (d / "data" / "bucket_bins.txt").write_text(BUCKET_BINS_LINE)
