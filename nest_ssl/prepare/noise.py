"""The noise set for NEST's denoising objective: a folder of audio (MUSAN or anything else) cut into windows.

`prepare_noise(source, output_dir)` writes

    noise_recordings.jsonl.gz   one lhotse Recording per readable audio file (when `source` is a folder)
    noise_cuts.jsonl.gz         the windows: what train_ds.noise_manifest points at
    rejects_noise.tsv           files (or manifest entries) left out, and why

`source` is a folder in MUSAN's layout (music/ noise/ speech/ below it: only the `parts` chosen are used), any
other folder (every audio file below it), or a manifest `open_cutset` reads (lhotse cuts or recordings, a NeMo
manifest: e.g. the noise manifest of a NeMo setup).

Windows: each file is split into the fewest equal pieces no longer than `window` seconds (a 25 s file with
window=10 gives 3 x 8.33 s, not 10 + 10 + 5), so no audio is lost and there are no slivers; files shorter than
`min_duration` are left out. Short windows keep the random-offset reads of the noise sampler cheap (lhotse PR #1095
reports the same speed as `random_mix_offset` on hour-long files). Window ids are deterministic:
`<recording id>_<start ms>-<end ms>`.

MUSAN's default parts are noise and music: its speech part is LibriVox read speech, the very domain of LibriLight,
and NEST already mixes other utterances of the batch in as "speech noise".
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

MUSAN_PARTS = ("music", "noise", "speech")
DEFAULT_MUSAN_PARTS = ("noise", "music")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".sph", ".m4a")


@dataclass
class NoiseStats:
    files: int = 0
    recordings: int = 0
    rejected: int = 0
    windows: int = 0
    seconds: float = 0.0
    layout: str = "folder"  # "musan", "folder" or "manifest"


def is_musan_layout(folder: str) -> bool:
    return any(os.path.isdir(os.path.join(folder, p)) for p in MUSAN_PARTS)


def iter_audio_files(folder: str) -> Iterator[str]:
    """Every audio file below `folder`, depth first, names sorted (deterministic ids and output order)."""
    stack = [folder]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            entries = sorted((e.name, e.is_dir()) for e in it if not e.name.startswith("."))
        dirs = []
        for name, is_dir in entries:
            if is_dir:
                dirs.append(os.path.join(d, name))
            elif name.lower().endswith(AUDIO_EXTENSIONS):
                yield os.path.join(d, name)
        stack.extend(reversed(dirs))


def balanced_windows(duration: float, window: float) -> Iterator[Tuple[float, float]]:
    """(offset, length) of the fewest equal pieces of `duration` that are no longer than `window`."""
    n = max(1, math.ceil(duration / window - 1e-9))
    piece = duration / n
    for i in range(n):
        yield i * piece, piece


def prepare_noise(
    source: str,
    output_dir: str,
    parts: Optional[Sequence[str]] = DEFAULT_MUSAN_PARTS,
    window: float = 10.0,
    min_duration: float = 1.0,
) -> NoiseStats:
    """Write the noise manifests for `source` (folder or manifest) into `output_dir`; see the module doc.

    Raises FileNotFoundError when `source` does not exist and ValueError when nothing usable is found;
    unreadable files never raise, they are listed in rejects_noise.tsv.
    """
    from lhotse import CutSet, Recording, RecordingSet
    from lhotse.utils import fastcopy

    if window <= 0 or min_duration < 0:
        raise ValueError("window must be > 0 and min_duration >= 0")
    if not os.path.exists(source):
        raise FileNotFoundError(f"noise source not found: {source}")
    os.makedirs(output_dir, exist_ok=True)
    cuts_path = os.path.join(output_dir, "noise_cuts.jsonl.gz")
    recs_path = os.path.join(output_dir, "noise_recordings.jsonl.gz")
    rejects_path = os.path.join(output_dir, "rejects_noise.tsv")
    stats = NoiseStats()
    rejects = []

    def sources() -> Iterator:
        """(id, cut or None, reason) for each input item."""
        if os.path.isdir(source):
            folders = [source]
            if is_musan_layout(source):
                stats.layout = "musan"
                chosen = list(parts or MUSAN_PARTS)
                unknown = [p for p in chosen if p not in MUSAN_PARTS]
                if unknown:
                    raise ValueError(f"unknown MUSAN part(s) {unknown}; choose from {list(MUSAN_PARTS)}")
                folders = [os.path.join(source, p) for p in chosen if os.path.isdir(os.path.join(source, p))]
            root = os.path.abspath(source)
            with RecordingSet.open_writer(recs_path + ".tmp.jsonl.gz") as rec_writer:
                for folder in folders:
                    for path in iter_audio_files(folder):
                        stats.files += 1
                        rec_id = os.path.splitext(os.path.relpath(os.path.abspath(path), root))[0]
                        try:
                            rec = Recording.from_file(os.path.abspath(path), recording_id=rec_id)
                        except Exception as err:
                            yield rec_id, path, None, f"unreadable audio: {' '.join(str(err).split())[:300]}"
                            continue
                        if rec.num_samples <= 0:
                            yield rec_id, path, None, "empty audio: no samples"
                            continue
                        rec_writer.write(rec)
                        stats.recordings += 1
                        yield rec_id, path, rec.to_cut(), None
            os.replace(recs_path + ".tmp.jsonl.gz", recs_path)
        else:
            from nest_ssl.data.manifests import open_cutset

            stats.layout = "manifest"
            for cut in open_cutset(source, what="noise manifest"):
                stats.files += 1
                stats.recordings += 1
                yield cut.id, _source_of(cut), fastcopy(cut, supervisions=[]), None

    tmp = cuts_path + ".tmp.jsonl.gz"
    with CutSet.open_writer(tmp) as writer:
        for item_id, path, cut, reason in sources():
            if cut is not None and cut.duration < min_duration:
                reason = f"shorter than min_duration ({cut.duration:.2f} s < {min_duration:g} s)"
            if reason is not None:
                stats.rejected += 1
                rejects.append(f"{item_id}\trejected\t{reason}\t{path}\n")
                continue
            sr = cut.sampling_rate
            for offset, length in balanced_windows(cut.duration, window):
                # on the sample grid, so that lhotse's sample counts agree with the durations exactly
                end = min(round((offset + length) * sr), cut.num_samples) / sr
                offset = round(offset * sr) / sr
                w = cut.truncate(offset=offset, duration=end - offset, preserve_id=True)
                start_ms, end_ms = round(offset * 1000), round(end * 1000)
                w = fastcopy(w, id=f"{cut.id}_{start_ms}-{end_ms}")
                writer.write(w)
                stats.windows += 1
                stats.seconds += w.duration
    if stats.windows == 0:
        os.remove(tmp)
        raise ValueError(f"no usable noise audio in {source} (files seen: {stats.files}; parts: {parts})")
    os.replace(tmp, cuts_path)
    with open(rejects_path + ".tmp", "w", encoding="utf-8") as f:
        f.write("recording_id\tstatus\treason\tpath\n")
        f.writelines(rejects)
    os.replace(rejects_path + ".tmp", rejects_path)
    logger.info("noise: %d files (%s layout) -> %d windows, %.2f h; %d rejected (see %s)", stats.files, stats.layout,
                stats.windows, stats.seconds / 3600, stats.rejected, rejects_path)
    return stats


def _source_of(cut) -> str:
    try:
        return ",".join(str(s.source) for s in cut.recording.sources)
    except Exception:  # a label for the rejects file only
        return "?"
