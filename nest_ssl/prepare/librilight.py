"""LibriLight manifests: streamed, parallel, resumable, and tolerant of bad files.

`prepare_librilight(corpus_dir, output_dir, subsets=..., num_jobs=N)` writes, per subset,

    librilight_recordings_<subset>.jsonl.gz     lhotse Recordings, id <subset>/<speaker>/<book>/<file>
    librilight_supervisions_<subset>.jsonl.gz   one SupervisionSegment per VAD interval, id <recording id>_<k>
    librilight_cuts_<subset>.jsonl.gz           the two joined: one MonoCut per recording holding its VAD
                                                supervisions (what `nest-ssl cuts windows` reads; lhotse's
                                                eager `cut simple` would need all 16.6 M supervisions in memory)
    rejects_<subset>.tsv                        every file that was left out, or kept with a fix, and why
    librilight_<subset>.stats.json              counts and hours

The ids, fields and values are those of `lhotse.recipes.librilight` (and of Libriheavy), plus what that recipe
drops: each supervision keeps `custom={"snr": ..., "book_meta": {...}}` from the file's JSON (book_meta without
the long free-text and URL fields, see BOOK_META_KEYS, because it is repeated on every VAD interval).

Why not lhotse's recipe: it globs a whole subset into a list, holds every supervision (16.6 M for `large`) in
memory, works in threads (JSON parsing and object building hold the GIL), raises on the first bad file and
redoes a subset from scratch after a crash. Here:

* Streaming: the corpus is walked directory by directory in sorted order and cut into chunks of `chunk_size`
  files; at most 2 x num_jobs chunks are in flight. Nothing held in memory grows with the corpus. A subset of at
  most 2 x num_jobs chunks is prepared in the calling process: starting workers would cost more than they save.
* Processes: each chunk is handled by a worker process that writes its own gzip part files; the parent only
  moves file names and counters. Parts are concatenated in chunk order at the end (gzip members concatenate
  into a valid gzip stream), so the output is the same, byte for byte, for any num_jobs.
* Resumable: a chunk's parts count only once its `.done` file (written last, holding a hash of the chunk's
  file list with sizes and mtimes) is there. A rerun after a kill redoes only missing or changed chunks.
  A finished subset is skipped when its listing hash is unchanged.
* Never aborts on a bad file: unreadable, empty or truncated audio and missing or invalid JSON put the file
  in the rejects file; VAD intervals past the end of the audio are clipped (or dropped when they start
  after it) and noted there too, with the file kept.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import soundfile as sf

logger = logging.getLogger(__name__)

LIBRILIGHT_SUBSETS = ("small", "medium", "large")
LIBRILIGHT_URL = "https://dl.fbaipublicfiles.com/librilight/data/{subset}.tar"
# The book metadata fields kept on each supervision; LibriVox's description and URLs are dropped.
BOOK_META_KEYS = ("id", "title", "authors", "genre", "meta_genre", "Dramatic Readings")
CHECK_AUDIO = ("header", "tail", "full")
REJECTS_HEADER = "recording_id\tstatus\treason\tpath\n"
_TAIL_FRAMES = 1024
_UNKNOWN_LENGTH = 1 << 62  # libsndfile reports about SF_COUNT_MAX frames when a FLAC header leaves the length open
_FORMAT_VERSION = 1


@dataclass
class SubsetStats:
    subset: str
    files: int = 0  # .flac files seen
    recordings: int = 0  # files in the manifests
    supervisions: int = 0
    rejected: int = 0  # files left out
    noted: int = 0  # files kept with a fix (clipped or dropped VAD intervals)
    audio_seconds: float = 0.0
    speech_seconds: float = 0.0
    chunks: int = 0
    chunks_reused: int = 0  # chunks found done from an earlier, interrupted run
    up_to_date: bool = False  # the whole subset was already prepared for this listing

    def add(self, other: dict) -> None:
        for k in ("files", "recordings", "supervisions", "rejected", "noted", "audio_seconds", "speech_seconds"):
            setattr(self, k, getattr(self, k) + other[k])


def output_paths(output_dir: str, subset: str) -> Dict[str, str]:
    return {
        "recordings": os.path.join(output_dir, f"librilight_recordings_{subset}.jsonl.gz"),
        "supervisions": os.path.join(output_dir, f"librilight_supervisions_{subset}.jsonl.gz"),
        "cuts": os.path.join(output_dir, f"librilight_cuts_{subset}.jsonl.gz"),
        "rejects": os.path.join(output_dir, f"rejects_{subset}.tsv"),
        "stats": os.path.join(output_dir, f"librilight_{subset}.stats.json"),
        "done": os.path.join(output_dir, f".librilight_{subset}.done"),
        "parts": os.path.join(output_dir, f".librilight_{subset}.parts"),
    }


def prepare_librilight(
    corpus_dir: str,
    output_dir: str,
    subsets: Sequence[str] = LIBRILIGHT_SUBSETS,
    num_jobs: int = 1,
    chunk_size: int = 64,
    check_audio: str = "tail",
    overwrite: bool = False,
) -> Dict[str, SubsetStats]:
    """Prepare the given LibriLight subsets of `corpus_dir` (holding small/ medium/ large/) into `output_dir`.

    check_audio: "header" reads only the header (as lhotse does); "tail" also decodes the last 1024 samples,
    which catches files cut short by an interrupted download or extraction for little cost; "full" decodes
    everything. overwrite=True redoes subsets that are already prepared.
    Raises FileNotFoundError for a subset directory that does not exist; bad files never raise.
    num_jobs > 1 starts worker processes with multiprocessing's "spawn": a script calling this at import time needs
    the usual `if __name__ == "__main__":` guard.
    """
    if check_audio not in CHECK_AUDIO:
        raise ValueError(f"check_audio must be one of {CHECK_AUDIO}, got {check_audio!r}")
    if chunk_size < 1 or num_jobs < 1:
        raise ValueError("chunk_size and num_jobs must be >= 1")
    corpus_dir = os.path.abspath(corpus_dir)
    for subset in subsets:
        if not os.path.isdir(os.path.join(corpus_dir, subset)):
            raise FileNotFoundError(f"LibriLight subset directory not found: {os.path.join(corpus_dir, subset)}")
    os.makedirs(output_dir, exist_ok=True)
    pool: List[ProcessPoolExecutor] = []

    def executor() -> ProcessPoolExecutor:
        # One pool for all subsets, started when first needed, of fresh interpreters: a worker imports only this
        # module (stdlib, soundfile), 0.1 s. Forked workers would start faster but share the caller's heap
        # copy-on-write, and Python's reference counts and GC soon copy it: with torch imported that is ~250 MB
        # more per worker, and more for a caller holding big objects.
        if not pool:
            pool.append(ProcessPoolExecutor(max_workers=num_jobs, mp_context=mp.get_context("spawn")))
        return pool[0]

    try:
        return {
            s: _prepare_subset(corpus_dir, output_dir, s, executor, num_jobs, chunk_size, check_audio, overwrite)
            for s in subsets
        }
    finally:
        for ex in pool:
            ex.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------------------------
# Listing: a sorted, streaming walk cut into chunks


def iter_flac(corpus_dir: str, subset: str) -> Iterator[str]:
    """Paths relative to corpus_dir of every *.flac under corpus_dir/subset, depth first, names sorted.

    Holds one directory listing per level, never the whole corpus.
    """
    stack = [subset]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(corpus_dir, rel)) as it:
            entries = sorted((e.name, e.is_dir()) for e in it)
        dirs = []
        for name, is_dir in entries:
            if is_dir:
                dirs.append(f"{rel}/{name}")
            elif name.endswith(".flac"):
                yield f"{rel}/{name}"
        stack.extend(reversed(dirs))


def _stat_key(path: str) -> str:
    try:
        st = os.stat(path)
        return f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        return "missing"


def iter_chunks(corpus_dir: str, subset: str, chunk_size: int) -> Iterator[Tuple[int, List[str], str]]:
    """(index, relative flac paths, hash of the paths with the sizes and mtimes of each flac and its json)."""
    chunk: List[str] = []
    h = hashlib.sha1()
    index = 0
    for rel in iter_flac(corpus_dir, subset):
        full = os.path.join(corpus_dir, rel)
        h.update(f"{rel}\0{_stat_key(full)}\0{_stat_key(full[:-5] + '.json')}\n".encode())
        chunk.append(rel)
        if len(chunk) == chunk_size:
            yield index, chunk, h.hexdigest()
            index += 1
            chunk, h = [], hashlib.sha1()
    if chunk:
        yield index, chunk, h.hexdigest()


class _ListingHash:
    """What a subset was prepared from: the chunk hashes in order (so every file's name, size and mtime), the
    audio check and the format version."""

    def __init__(self, check_audio: str):
        self.h = hashlib.sha1(f"v{_FORMAT_VERSION}:{check_audio}\n".encode())
        self.chunks = 0

    def update(self, chunk_hash: str) -> None:
        self.h.update(chunk_hash.encode())
        self.chunks += 1

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def _listing_hash(chunk_hashes: Iterable[str], check_audio: str) -> str:
    listing = _ListingHash(check_audio)
    for c in chunk_hashes:
        listing.update(c)
    return listing.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# One subset


def _prepare_subset(corpus_dir, output_dir, subset, executor: Callable[[], ProcessPoolExecutor], num_jobs,
                    chunk_size, check_audio, overwrite) -> SubsetStats:
    paths = output_paths(output_dir, subset)
    finals = [paths[k] for k in ("recordings", "supervisions", "cuts", "rejects", "stats")]
    done = _read_json(paths["done"])
    if overwrite:
        shutil.rmtree(paths["parts"], ignore_errors=True)
    elif done is not None and all(os.path.exists(p) for p in finals):
        listing = _listing_hash((h for _, _, h in iter_chunks(corpus_dir, subset, chunk_size)), check_audio)
        if listing == done.get("listing"):
            stats = SubsetStats(**done["stats"])
            stats.up_to_date = True
            logger.info("LibriLight %s: already prepared for this listing, skipping", subset)
            return stats
        logger.info("LibriLight %s: the corpus changed since it was prepared; preparing again", subset)
    for p in [paths["done"]] + finals:
        if os.path.exists(p):
            os.remove(p)

    parts = paths["parts"]
    os.makedirs(parts, exist_ok=True)
    stats = SubsetStats(subset=subset)
    listing = _ListingHash(check_audio)
    t0 = time.time()
    last_log = t0

    def collect(result: dict) -> None:
        nonlocal last_log
        stats.add(result)
        if time.time() - last_log > 30:
            last_log = time.time()
            logger.info("LibriLight %s: %d files (%.1f files/s)", subset, stats.files,
                        stats.files / max(time.time() - t0, 1e-9))

    chunks = iter_chunks(corpus_dir, subset, chunk_size)
    # Workers only for more than 2 x num_jobs chunks: for less work, starting processes costs more than it saves.
    head = list(itertools.islice(chunks, 2 * num_jobs + 1)) if num_jobs > 1 else []
    ex = executor() if len(head) > 2 * num_jobs else None
    in_flight = set()
    try:
        for index, rels, chunk_hash in itertools.chain(head, chunks):
            listing.update(chunk_hash)
            old = _read_json(_part(parts, index, "done"))
            if old is not None and old["hash"] == chunk_hash and old["check_audio"] == check_audio:
                stats.chunks_reused += 1
                collect(old["stats"])
                continue
            task = (corpus_dir, rels, chunk_hash, _part(parts, index, ""), check_audio)
            if ex is None:
                collect(process_chunk(*task))
                continue
            in_flight.add(ex.submit(process_chunk, *task))
            if len(in_flight) >= 2 * num_jobs:
                finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                for f in finished:
                    collect(f.result())
        for f in in_flight:
            collect(f.result())
    except BaseException:
        for f in in_flight:  # leave no worker writing into the parts folder behind us
            f.cancel()
        wait(in_flight)
        raise

    stats.chunks = listing.chunks
    if stats.files == 0:
        logger.warning("LibriLight %s: no .flac files under %s", subset, os.path.join(corpus_dir, subset))
    _merge(parts, stats.chunks, paths)
    _write_json(paths["stats"], asdict(stats))
    _write_json(paths["done"], {"listing": listing.hexdigest(), "stats": asdict(stats)})
    shutil.rmtree(parts, ignore_errors=True)
    logger.info(
        "LibriLight %s: %d files -> %d recordings (%.1f h), %d supervisions (%.1f h of speech); %d rejected, "
        "%d kept with notes (see %s); %d of %d chunks reused from an earlier run",
        subset, stats.files, stats.recordings, stats.audio_seconds / 3600, stats.supervisions,
        stats.speech_seconds / 3600, stats.rejected, stats.noted, paths["rejects"], stats.chunks_reused, stats.chunks,
    )
    return stats


def _part(parts_dir: str, index: int, kind: str) -> str:
    base = os.path.join(parts_dir, f"chunk{index:08d}")
    return f"{base}.{kind}" if kind else base


def _merge(parts_dir: str, n_chunks: int, paths: Dict[str, str]) -> None:
    """Concatenate the chunk parts in order (gzip members concatenate into one valid stream)."""
    for key, kind, header in (
        ("recordings", "rec.jsonl.gz", None),
        ("supervisions", "sup.jsonl.gz", None),
        ("cuts", "cut.jsonl.gz", None),
        ("rejects", "rej.tsv", REJECTS_HEADER.encode()),
    ):
        final = paths[key]
        tmp = final + ".tmp"
        with open(tmp, "wb") as out:
            if header:
                out.write(header)
            elif n_chunks == 0:
                out.write(gzip.compress(b"", mtime=0))  # a valid, empty gzip file
            for i in range(n_chunks):
                with open(_part(parts_dir, i, kind), "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        os.replace(tmp, final)


# ---------------------------------------------------------------------------------------------------------------
# One chunk (runs in a worker process)


def process_chunk(corpus_dir: str, rels: List[str], chunk_hash: str, part_base: str, check_audio: str) -> dict:
    """Prepare the files `rels`, write `<part_base>.{rec,sup,cut}.jsonl.gz` and `.rej.tsv`, and then `.done`."""
    stats = dict(files=0, recordings=0, supervisions=0, rejected=0, noted=0, audio_seconds=0.0, speech_seconds=0.0)
    rec_lines, sup_lines, cut_lines, rej_lines = [], [], [], []
    for rel in rels:
        stats["files"] += 1
        path = os.path.join(corpus_dir, rel)
        rec_id = rel[: -len(".flac")]
        try:
            rec, sups, notes = prepare_file(path, rec_id, check_audio)
        except Exception as err:  # a file must never stop the run; an unforeseen failure is a reject too
            rec, sups, notes = None, [], [f"unexpected error: {type(err).__name__}: {err}"]
        status = "kept" if rec is not None else "rejected"
        for note in notes:
            rej_lines.append(f"{rec_id}\t{status}\t{_tsv_safe(note)}\t{_tsv_safe(path)}\n")
        if rec is None:
            stats["rejected"] += 1
            continue
        stats["noted"] += bool(notes)
        stats["recordings"] += 1
        stats["supervisions"] += len(sups)
        stats["audio_seconds"] += rec["duration"]
        stats["speech_seconds"] += sum(s["duration"] for s in sups)
        rec_json = json.dumps(rec, ensure_ascii=False)
        sup_jsons = [json.dumps(s, ensure_ascii=False) for s in sups]
        rec_lines.append(rec_json)
        sup_lines.extend(sup_jsons)
        # MonoCut.to_dict() of the recording with its supervisions, assembled from the pieces already encoded
        # (json.dumps of the dict gives the same text; encoding it twice would cost a third of the run).
        cut_lines.append(
            f'{{"id": {json.dumps(rec["id"], ensure_ascii=False)}, "start": 0.0, "duration": '
            f'{json.dumps(rec["duration"])}, "channel": 0, "supervisions": [{", ".join(sup_jsons)}], '
            f'"recording": {rec_json}, "type": "MonoCut"}}'
        )
    _write_gz_lines(f"{part_base}.rec.jsonl.gz", rec_lines)
    _write_gz_lines(f"{part_base}.sup.jsonl.gz", sup_lines)
    _write_gz_lines(f"{part_base}.cut.jsonl.gz", cut_lines)
    _write_text(f"{part_base}.rej.tsv", "".join(rej_lines))
    _write_json(f"{part_base}.done", {"hash": chunk_hash, "check_audio": check_audio, "stats": stats})
    return stats


def prepare_file(path: str, rec_id: str, check_audio: str = "tail") -> Tuple[Optional[dict], List[dict], List[str]]:
    """(recording dict or None when the file is rejected, supervision dicts, notes explaining rejects/fixes).

    The dicts are what lhotse's Recording.to_dict() / SupervisionSegment.to_dict() produce.
    """
    try:
        # One open for the header and the check: opening a FLAC costs more than reading its last samples.
        with sf.SoundFile(path) as f:
            sr, frames, channels = int(f.samplerate), int(f.frames), int(f.channels)
            if frames <= 0 or sr <= 0:
                problem = "empty audio: no samples"
            elif frames >= _UNKNOWN_LENGTH:
                problem = "unreadable audio: the header does not give the length (FLAC total samples 0); re-encode it"
            else:
                try:
                    problem = _check_audio(f, frames, check_audio)
                except Exception as err:
                    problem = f"unreadable audio: decoding {'its last samples' if check_audio == 'tail' else 'it'} " \
                              f"failed (truncated or corrupt): {_one_line(err)}"
    except Exception as err:
        return None, [], [_empty_audio(path) or f"unreadable audio: {_one_line(err)}"]
    if problem:
        return None, [], [problem]

    json_path = path[: -len(".flac")] + ".json"
    try:
        with open(json_path, "rb") as f:
            meta = json.loads(f.read())
    except FileNotFoundError:
        return None, [], ["missing JSON: no " + os.path.basename(json_path) + " beside the audio"]
    except (ValueError, OSError) as err:
        return None, [], [f"invalid JSON: {_one_line(err)}"]
    if not isinstance(meta, dict):
        return None, [], ["invalid JSON: not an object"]
    speaker = meta.get("speaker")
    vad = meta.get("voice_activity")
    if speaker is None or isinstance(speaker, (dict, list)):
        return None, [], ["invalid JSON: no 'speaker'"]
    if not isinstance(vad, list):
        return None, [], ["invalid JSON: no 'voice_activity' list"]

    duration = frames / sr
    custom = {}
    snr = meta.get("snr")
    if isinstance(snr, (int, float)) and not isinstance(snr, bool) and math.isfinite(snr):
        custom["snr"] = snr
    book = meta.get("book_meta")
    if isinstance(book, dict):
        custom["book_meta"] = {k: book[k] for k in BOOK_META_KEYS if k in book}

    notes: List[str] = []
    sups: List[dict] = []
    for k, interval in enumerate(vad):
        if (
            not isinstance(interval, (list, tuple))
            or len(interval) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in interval)
        ):
            notes.append(f"VAD interval {k} is not [onset, offset]: dropped")
            continue
        onset, offset = float(interval[0]), float(interval[1])
        if onset < 0:
            notes.append(f"VAD interval {k} starts at {onset:g} < 0: clipped to 0")
            onset = 0.0
        if offset > duration:
            if onset >= duration:
                notes.append(f"VAD beyond the end: interval {k} [{onset:g}, {offset:g}] starts after the audio "
                             f"ends ({duration:g} s): dropped")
                continue
            notes.append(f"VAD beyond the end: interval {k} ends at {offset:g} > {duration:g} s: clipped")
            offset = duration
        dur = (compute_num_samples(offset, sr) - compute_num_samples(onset, sr)) / sr
        if dur <= 0:
            notes.append(f"VAD interval {k} [{onset:g}, {offset:g}] is empty: dropped")
            continue
        sup = {
            "id": f"{rec_id}_{k}",
            "recording_id": rec_id,
            "start": onset,
            "duration": dur,
            "channel": 0,
            "language": "English",
            "speaker": str(speaker),
        }
        if custom:
            sup["custom"] = custom
        sups.append(sup)
    if not sups:
        return None, [], notes + ["no usable voice activity: " + ("empty list" if not vad else "all intervals dropped")]
    rec = {
        "id": rec_id,
        "sources": [{"type": "file", "channels": list(range(channels)), "source": path}],
        "sampling_rate": sr,
        "num_samples": frames,
        "duration": duration,
        "channel_ids": list(range(channels)),
    }
    return rec, sups, notes


def _check_audio(f: "sf.SoundFile", frames: int, mode: str) -> Optional[str]:
    """None when the audio decodes as far as `mode` looks, else the reason (raises when libsndfile does)."""
    if mode == "header":
        return None
    bytes_per_frame = 2 * f.channels
    if mode == "tail":
        start = max(0, frames - _TAIL_FRAMES)
        f.seek(start)
        got = len(f.buffer_read(frames - start, dtype="int16")) // bytes_per_frame
        want = frames - start
    else:
        got = 0
        while True:
            n = len(f.buffer_read(1 << 16, dtype="int16")) // bytes_per_frame
            if n == 0:
                break
            got += n
        want = frames
    if got < want:
        return f"unreadable audio: truncated ({got} of the last {want} samples decode)" if mode == "tail" else (
            f"unreadable audio: truncated ({got} of {want} samples decode)")
    return None


def _empty_audio(path: str) -> Optional[str]:
    """Why a file libsndfile cannot open is empty rather than broken (a 0-byte file); None otherwise."""
    try:
        return "empty audio: 0-byte file" if os.path.getsize(path) == 0 else None
    except OSError:
        return None


def compute_num_samples(duration: float, sampling_rate: int) -> int:
    """lhotse.utils.compute_num_samples (half-up rounding), kept here so workers need not import lhotse/torch."""
    return int(Decimal(round(duration * sampling_rate, ndigits=8)).quantize(0, rounding=ROUND_HALF_UP))


# ---------------------------------------------------------------------------------------------------------------
# Small file helpers: every part is written to a temporary name and renamed, so a kill never leaves half a part


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _tsv_safe(s: str) -> str:
    return s.replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _write_gz_lines(path: str, lines: List[str]) -> None:
    tmp = path + ".tmp"
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with open(tmp, "wb") as f:
        # mtime=0 and no file name in the header: the same input gives the same bytes
        with gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=6) as gz:
            gz.write(data)
    os.replace(tmp, path)


def _write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
    _write_text(path, json.dumps(obj, indent=1) + "\n")


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None
