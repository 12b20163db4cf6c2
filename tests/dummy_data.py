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
