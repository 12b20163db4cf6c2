"""Lhotse Shar export after a global shuffle that never holds the manifest in memory.

DynamicBucketingSampler only shuffles within its buffer, and Shar readers shuffle shard order, not cuts across
shards; so the cuts must be shuffled globally once, before they are written. `lhotse shar export` cannot do that
for a big lazy manifest (a 10k-cut streaming buffer). We do an external shuffle:

1. stream the input once and append each cut (one JSON line) to one of `fanout` temporary files picked at random;
2. for each temporary file in turn: if it is small enough (`max_lines_in_memory`) load it, shuffle it in memory
   and emit it; otherwise split it again the same way (recursion keeps memory bounded for any corpus size);
3. the concatenation is a uniformly random permutation (each cut's final position is decided by independent
   random bucket choices and an in-bucket shuffle), written to Shar with FLAC audio.

The temporary files live in `<out_dir>/.shuffle-tmp` (same disk as the output; about the size of the uncompressed
manifest) and are removed at the end. Reading the result back is `open_cutset(out_dir)`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Union

from lhotse import CutSet
from lhotse.cut import Cut
from lhotse.lazy import Dillable
from lhotse.serialization import deserialize_item

from nest_ssl.data.manifests import ManifestError, open_cutset

DEFAULT_FANOUT = 64
DEFAULT_MAX_LINES_IN_MEMORY = 200_000


def _spill(lines: Iterator[str], directory: Path, fanout: int, rng: random.Random) -> List[Path]:
    """Append each line to one of `fanout` files in `directory`, chosen at random; returns the file paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"bucket.{i:04d}.jsonl" for i in range(fanout)]
    handles = [open(p, "w", encoding="utf-8", buffering=1 << 16) for p in paths]
    try:
        for line in lines:
            handles[rng.randrange(fanout)].write(line)
    finally:
        for h in handles:
            h.close()
    return paths


def _read_bucket(path: Path, max_lines: int) -> Optional[List[str]]:
    """The bucket's lines, or None when it has more than max_lines (then it must be split again)."""
    lines: List[str] = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            lines.append(line)
            if len(lines) > max_lines:
                return None
    return lines


def external_shuffle_lines(
    lines: Iterator[str],
    tmp_dir: Union[str, os.PathLike],
    *,
    seed: int = 0,
    fanout: int = DEFAULT_FANOUT,
    max_lines_in_memory: int = DEFAULT_MAX_LINES_IN_MEMORY,
) -> Iterator[str]:
    """Yield `lines` (each ending in a newline) in a uniformly random order with bounded memory (see module doc).

    At most `max_lines_in_memory` lines are held at a time; the rest waits in temporary files under tmp_dir.
    Deterministic for a given seed and input order. tmp_dir is removed at the end.
    """
    if fanout < 2:
        raise ValueError(f"fanout must be >= 2, got {fanout}")
    if max_lines_in_memory < 1:
        raise ValueError(f"max_lines_in_memory must be >= 1, got {max_lines_in_memory}")
    tmp = Path(tmp_dir)
    rng = random.Random(seed)

    def emit(paths: List[Path], depth: int) -> Iterator[str]:
        for i, path in enumerate(paths):
            chunk = _read_bucket(path, max_lines_in_memory)
            if chunk is None:
                # Too big for memory: split this bucket again, one level deeper.
                sub = path.parent / f"{path.stem}.d{depth + 1}"
                with open(path, "r", encoding="utf-8") as f:
                    sub_paths = _spill(f, sub, fanout, rng)
                path.unlink()
                yield from emit(sub_paths, depth + 1)
                shutil.rmtree(sub, ignore_errors=True)
                continue
            path.unlink()
            rng.shuffle(chunk)
            yield from chunk
            del chunk

    try:
        top = _spill(lines, tmp / "d0", fanout, rng)
        yield from emit(top, 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _ShuffledCuts(Dillable):
    """Lazy CutSet data: the cuts of `cuts` after an external shuffle (re-done on every iteration)."""

    def __init__(self, cuts: CutSet, tmp_dir: Path, seed: int, fanout: int, max_lines_in_memory: int) -> None:
        self.cuts = cuts
        self.tmp_dir = tmp_dir
        self.seed = seed
        self.fanout = fanout
        self.max_lines_in_memory = max_lines_in_memory

    def __iter__(self) -> Iterator[Cut]:
        lines = (json.dumps(c.to_dict(), ensure_ascii=False) + "\n" for c in self.cuts)
        for line in external_shuffle_lines(
            lines, self.tmp_dir, seed=self.seed, fanout=self.fanout, max_lines_in_memory=self.max_lines_in_memory
        ):
            yield deserialize_item(json.loads(line))


def export_shar(
    cuts_path,
    out_dir: Union[str, os.PathLike],
    shard_size: int = 1000,
    seed: int = 0,
    num_jobs: int = 1,
    *,
    shuffle: bool = True,
    audio_format: str = "flac",
    fanout: int = DEFAULT_FANOUT,
    max_lines_in_memory: int = DEFAULT_MAX_LINES_IN_MEMORY,
    verbose: bool = False,
) -> Dict[str, List[str]]:
    """Write the cuts of `cuts_path` (anything open_cutset accepts) as Lhotse Shar into `out_dir`.

    Globally shuffled first (external shuffle, bounded memory) unless shuffle=False; audio re-encoded as
    `audio_format` (FLAC by default; only each cut's span is stored). `num_jobs > 1` encodes shards in parallel
    processes. Returns {field: [shard paths]}. out_dir must not already hold Shar files.
    """
    if shard_size is None or int(shard_size) < 1:
        raise ManifestError(f"shard size must be a positive number of cuts per shard, got {shard_size!r}")
    if int(num_jobs) < 1:
        raise ManifestError(f"num_jobs must be >= 1, got {num_jobs!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ManifestError(f"output {out} exists and is not a directory; choose a new directory")
    if out.is_dir() and any(p.name.startswith(("cuts.", "recording.")) for p in out.iterdir()):
        raise ManifestError(
            f"output directory {out} already holds Shar files; export into an empty or new directory so shards of "
            "two exports do not mix"
        )
    cuts = open_cutset(cuts_path, what="cuts")
    out.mkdir(parents=True, exist_ok=True)
    if shuffle:
        cuts = CutSet(_ShuffledCuts(cuts, out / ".shuffle-tmp", int(seed), fanout, max_lines_in_memory))
    try:
        written = cuts.to_shar(
            str(out),
            fields={"recording": audio_format},
            shard_size=int(shard_size),
            num_jobs=int(num_jobs),
            verbose=verbose,
            warn_unused_fields=False,
        )
    finally:
        shutil.rmtree(out / ".shuffle-tmp", ignore_errors=True)
    return {k: [str(p) for p in v] for k, v in written.items()}
