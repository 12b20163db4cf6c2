"""Reading manifests lazily: NeMo JSON lines, Lhotse CutSet/RecordingSet JSONL(.gz) and Lhotse Shar directories.

`open_cutset(spec)` is the one entry point the rest of nest-ssl uses for `train_ds.manifest_filepath`,
`validation_ds.manifest_filepath` and `noise_manifest`. It never holds a manifest in memory: the returned CutSet
wraps a `ManifestSource` that re-opens its files on every iteration, so a 60k-hour corpus streams with constant
memory. Bad input raises `ManifestError` naming the file, the line and what to do about it.

NeMo lines become `MonoCut`s without touching the audio when `duration` is given (the sampling rate is then taken
from an optional `sampling_rate` field or assumed to be `sample_rate`, mono); when `duration` is missing the file
header is read on every pass, which is why `nest_ssl.prepare.nemo_manifest` (the `nest-ssl manifest from-nemo`
command) exists: it reads each header once, validates the line against the file and writes an exact Lhotse CutSet.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from lhotse import CutSet, MonoCut, Recording
from lhotse.audio import AudioSource
from lhotse.cut import Cut, MultiCut
from lhotse.lazy import Dillable
from lhotse.serialization import deserialize_item
from lhotse.supervision import SupervisionSegment
from lhotse.utils import compute_num_samples

from nest_ssl.errors import UserError, describe_os_error

log = logging.getLogger(__name__)

PathSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]

# Keys of a NeMo manifest line that we consume; everything else goes to cut.custom.
NEMO_AUDIO_KEYS = ("audio_filepath", "audio_filename")  # NeMo accepts both spellings
NEMO_CONSUMED_KEYS = NEMO_AUDIO_KEYS + ("duration", "offset", "sampling_rate")

# Default allowed disagreement between a manifest `duration` and the audio file, in seconds.
DEFAULT_DURATION_TOLERANCE = 0.1

_SHAR_CUTS_RE = re.compile(r"^cuts\.(\d+)\.jsonl(\.gz)?$")


class ManifestError(UserError, ValueError):
    """A user-facing problem with a manifest: the message names the file (and line) and says what to do."""

    def __init__(self, message: str, *, path: Optional[str] = None, line: Optional[int] = None):
        super().__init__(message)
        self.path = path
        self.line = line


def _where(what: str, path: Any, line: Optional[int] = None) -> str:
    loc = f"{path}:{line}" if line is not None else f"{path}"
    return f"{what}: {loc}" if what else loc


# ----------------------------------------------------------------------------------------------------------------
# Spec parsing and format detection
# ----------------------------------------------------------------------------------------------------------------


def split_spec(spec: PathSpec) -> List[str]:
    """`path`, `"a,b,c"`, `[a, b]` (or an OmegaConf ListConfig) -> list of path strings, in order."""
    if spec is None:
        return []
    if isinstance(spec, (str, os.PathLike)):
        items = [spec]
    else:
        try:
            items = list(spec)
        except TypeError:
            items = [spec]
    out: List[str] = []
    for item in items:
        if isinstance(item, (list, tuple)) or (not isinstance(item, (str, os.PathLike)) and hasattr(item, "__iter__")):
            # NeMo allows [[path, weight], ...] for weighted sampling; we do not weight, so say so clearly.
            raise ManifestError(
                f"nested manifest list entry {list(item)!r} is not supported (weighted [[path, weight]] lists are "
                "a NeMo tarred-data feature); give plain paths or a comma-separated string"
            )
        for part in str(os.fspath(item)).split(","):
            part = part.strip()
            if part:
                out.append(part)
    return out


def _open_text(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def _first_record(path: str, what: str) -> Tuple[int, Optional[dict]]:
    """(line number, parsed dict) of the first non-blank line; (0, None) for an empty file."""
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                return lineno, _parse_json_line(line, path, lineno, what)
    except OSError as err:
        if err.errno is not None:  # the file, not its content: permission, a folder, a failing disk
            raise ManifestError(f"{_where(what, path)}: cannot read the manifest: {describe_os_error(err)}",
                                path=path) from None
        raise ManifestError(
            f"{_where(what, path)}: cannot read the manifest ({err}); check that it is a text JSON-lines file "
            "(optionally .gz) and not truncated",
            path=path,
        ) from err
    except (EOFError, UnicodeDecodeError) as err:
        raise ManifestError(
            f"{_where(what, path)}: cannot read the manifest ({err}); check that it is a text JSON-lines file "
            "(optionally .gz) and not truncated",
            path=path,
        ) from err
    return 0, None


def _parse_json_line(line: str, path: str, lineno: int, what: str) -> dict:
    try:
        data = json.loads(line)
    except ValueError as err:
        snippet = line.strip()
        snippet = snippet if len(snippet) <= 80 else snippet[:77] + "..."
        raise ManifestError(
            f"{_where(what, path, lineno)}: line is not valid JSON ({err.msg} at column {err.colno}): {snippet!r}. "
            "Each manifest line must be one JSON object; fix or delete this line",
            path=path,
            line=lineno,
        ) from None
    if not isinstance(data, dict):
        raise ManifestError(
            f"{_where(what, path, lineno)}: line is JSON but not an object ({type(data).__name__}); each manifest "
            "line must be one JSON object such as {\"audio_filepath\": ..., \"duration\": ...}",
            path=path,
            line=lineno,
        )
    return data


def _kind_of_record(data: dict) -> str:
    if any(k in data for k in NEMO_AUDIO_KEYS):
        return "nemo"
    if "sources" in data or "type" in data:
        return "lhotse"
    if "recording_id" in data:
        return "supervisions"
    return "unknown"


def _shar_fields(directory: Path, metadata_only: bool, what: str) -> List[Dict[str, str]]:
    """One dict field -> path per shard, shard order by index; validates that every field has every shard."""
    by_field: Dict[str, Dict[str, str]] = {}
    try:
        listing = list(directory.iterdir())
    except OSError as err:
        raise ManifestError(f"{_where(what, directory)}: cannot list the directory: {describe_os_error(err)}",
                            path=str(directory)) from None
    for p in listing:
        name = p.name
        parts = name.split(".")
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        field, idx = parts[0], parts[1]
        if field == "cuts" and not _SHAR_CUTS_RE.match(name):
            continue
        by_field.setdefault(field, {})[idx] = str(p)
    cuts = by_field.pop("cuts", {})
    if not cuts:
        raise ManifestError(
            f"{_where(what, directory)}: is a directory but not a Lhotse Shar directory (no cuts.NNNNNN.jsonl.gz "
            "files); give the manifest file itself, or a directory written by `nest-ssl shar export`",
            path=str(directory),
        )
    if metadata_only:
        by_field = {}
    shards = []
    for idx in sorted(cuts):
        shard = {"cuts": cuts[idx]}
        for field, paths in sorted(by_field.items()):
            if idx not in paths:
                raise ManifestError(
                    f"{_where(what, directory)}: Shar shard {idx} has cuts but no '{field}' file; the export is "
                    "incomplete: re-run `nest-ssl shar export` into an empty directory",
                    path=str(directory),
                )
            shard[field] = paths[idx]
        shards.append(shard)
    return shards


# (path, size, mtime_ns) of the gzip files found complete by this process: a file is decompressed once per process.
_complete_gzip: set = set()


def check_gzip_complete(path: str, what: str) -> None:
    """Raise ManifestError if the gzip file at `path` stops before the end of its (last) gzip stream.

    A truncated .jsonl.gz (an interrupted copy or write) would otherwise be noticed only when the sampler reaches
    its end, hours into an epoch. This decompresses the file once, discarding the output (about a second per few
    hundred MB of text), and accepts concatenated gzip members (the LibriLight preparation writes those).
    """
    import zlib

    try:
        st = os.stat(path)
    except OSError as err:
        raise ManifestError(f"{_where(what, path)}: cannot read the manifest: {describe_os_error(err)}",
                            path=path) from None
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _complete_gzip:
        return
    lines = 0
    d = zlib.decompressobj(wbits=31)
    try:
        with open(path, "rb") as f:
            pending = b""
            while True:
                chunk = pending or f.read(1 << 20)
                pending = b""
                if not chunk:
                    break
                if d.eof:  # the previous member ended: a concatenated one starts here
                    d = zlib.decompressobj(wbits=31)
                lines += d.decompress(chunk).count(b"\n")
                if d.eof:
                    pending = d.unused_data
    except OSError as err:
        raise ManifestError(f"{_where(what, path)}: cannot read the manifest: {describe_os_error(err)}",
                            path=path) from None
    except zlib.error as err:
        raise ManifestError(
            f"{_where(what, path)}: the gzip data is corrupt after about {lines} lines ({err}); re-create or "
            "re-copy the file",
            path=path,
        ) from None
    if not d.eof:
        raise ManifestError(
            f"{_where(what, path)}: the file is truncated: its gzip stream stops after {lines} lines "
            f"({st.st_size} bytes) without its end (an interrupted write or copy?); re-create or re-copy it",
            path=path,
        )
    _complete_gzip.add(key)


@dataclass(frozen=True)
class ManifestPart:
    """One unit of a manifest source: a NeMo/Lhotse JSONL file or one Shar shard (`fields`: field -> path)."""

    kind: str  # "nemo" | "lhotse" | "shar"
    path: str  # the manifest file, or the shard's cuts file
    fields: Tuple[Tuple[str, str], ...] = ()


def resolve_parts(spec: PathSpec, *, what: str = "train_ds.manifest_filepath", metadata_only: bool = False) -> List[ManifestPart]:
    """Expand a spec to its parts (each Shar directory to its shards), checking existence, format, emptiness and
    that gzip files are complete (check_gzip_complete)."""
    paths = split_spec(spec)
    if not paths:
        raise ManifestError(f"{what}: no manifest given; set {what} to a manifest path, a comma-separated list or a list")
    parts: List[ManifestPart] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            shards = _shar_fields(p, metadata_only, what)
            # An export whose shards are empty is an empty manifest; looking at the first shard is cheap.
            if _first_record(shards[0]["cuts"], what)[1] is None:
                raise ManifestError(
                    f"{_where(what, path)}: the Shar directory's first shard has no cuts; re-export it or give "
                    "another manifest",
                    path=path,
                )
            for shard in shards:
                if shard["cuts"].endswith(".gz"):
                    check_gzip_complete(shard["cuts"], what)
                fields = tuple((k, v) for k, v in shard.items() if k != "cuts")
                parts.append(ManifestPart("shar", shard["cuts"], fields))
            continue
        if not p.exists():
            raise ManifestError(
                f"{what}: manifest not found: {path} (no such file or directory); check the path "
                "(relative paths are relative to the current directory)",
                path=path,
            )
        lineno, first = _first_record(path, what)
        if first is None:
            raise ManifestError(
                f"{_where(what, path)}: manifest is empty (no JSON lines); point {what} at a manifest with entries "
                "or remove this one from the list",
                path=path,
            )
        kind = _kind_of_record(first)
        if kind == "supervisions":
            raise ManifestError(
                f"{_where(what, path, lineno)}: this is a Lhotse SupervisionSet, which has no audio of its own; "
                "give a CutSet (e.g. `lhotse cut simple -r RECORDINGS -s SUPERVISIONS CUTS.jsonl.gz`) or the "
                "RecordingSet",
                path=path,
                line=lineno,
            )
        if kind == "unknown":
            keys = ", ".join(sorted(first)[:8])
            raise ManifestError(
                f"{_where(what, path, lineno)}: unrecognised manifest line (keys: {keys}); expected a NeMo line with "
                "'audio_filepath' (and 'duration'), or a Lhotse cut/recording",
                path=path,
                line=lineno,
            )
        if str(path).endswith(".gz"):
            check_gzip_complete(str(path), what)
        parts.append(ManifestPart(kind, str(path)))
    return parts


# ----------------------------------------------------------------------------------------------------------------
# NeMo lines -> cuts
# ----------------------------------------------------------------------------------------------------------------


def _number(value: Any, key: str, path: str, lineno: int, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ManifestError(
            f"{_where(what, path, lineno)}: '{key}' must be a number of seconds, got {value!r}; fix this line",
            path=path,
            line=lineno,
        )
    try:
        x = float(value)
    except ValueError:
        raise ManifestError(
            f"{_where(what, path, lineno)}: '{key}' must be a number of seconds, got {value!r}; fix this line",
            path=path,
            line=lineno,
        ) from None
    if not math.isfinite(x) or x < 0:
        raise ManifestError(
            f"{_where(what, path, lineno)}: '{key}' must be a finite non-negative number of seconds, got {value!r}; "
            "fix this line",
            path=path,
            line=lineno,
        )
    return x


def _recording_id(audio_path: str, manifest_dir: str) -> str:
    """Deterministic id from the audio path: relative to the manifest's folder when inside it, extension dropped."""
    rel = os.path.relpath(audio_path, manifest_dir) if os.path.isabs(audio_path) else audio_path
    if rel.startswith(".."):
        rel = audio_path
    stem, _ = os.path.splitext(rel)
    return stem.lstrip("/")


def nemo_line_to_cut(
    data: dict,
    *,
    path: str,
    lineno: int,
    what: str = "manifest",
    sample_rate: int = 16000,
    probe: bool = False,
    check: bool = False,
    duration_tolerance: float = DEFAULT_DURATION_TOLERANCE,
) -> Cut:
    """Turn one parsed NeMo manifest line into a cut.

    probe: read the audio header even when `duration` is given (exact sampling rate, channels, length);
    check: also verify that the file exists and that `duration`/`offset` agree with it (implies probe).
    Without probe and with `duration`, no file is touched.
    """
    data = dict(data)
    audio = None
    for key in NEMO_AUDIO_KEYS:
        if key in data:
            audio = data.pop(key)
            break
    if not isinstance(audio, str) or not audio:
        raise ManifestError(
            f"{_where(what, path, lineno)}: 'audio_filepath' must be a non-empty string, got {audio!r}; fix this line",
            path=path,
            line=lineno,
        )
    manifest_dir = os.path.dirname(os.path.abspath(path))
    resolved = audio if os.path.isabs(audio) else os.path.normpath(os.path.join(manifest_dir, audio))
    has_offset = data.get("offset") is not None
    offset = _number(data.pop("offset", None) or 0.0, "offset", path, lineno, what)
    duration = data.pop("duration", None)
    if duration is not None:
        duration = _number(duration, "duration", path, lineno, what)
        if duration <= 0:
            raise ManifestError(
                f"{_where(what, path, lineno)}: 'duration' is {duration}, it must be positive; fix or delete this line",
                path=path,
                line=lineno,
            )
    sr_field = data.pop("sampling_rate", None)
    rec_id = _recording_id(resolved, manifest_dir)
    cut_id = rec_id if not has_offset else f"{rec_id}_{int(round(offset * 1000)):09d}ms"

    # A segment that starts where its file starts cannot be described without the file's length: lhotse reads a
    # segment as long as its recording as "the whole file", so a Recording ending at the segment's end would load
    # all of it. Its header is read instead (one per file: the other segments of the file start later).
    starts_file = has_offset and duration is not None and offset < 1e-3
    if duration is None or probe or check or starts_file:
        if not os.path.isfile(resolved):
            raise ManifestError(
                f"{_where(what, path, lineno)}: audio file not found: {resolved} (relative paths are resolved against "
                f"the manifest's folder {manifest_dir}); fix the path or delete this line",
                path=path,
                line=lineno,
            )
        try:
            recording = Recording.from_file(resolved, recording_id=rec_id)
        except Exception as err:  # lhotse raises several types depending on the backend
            raise ManifestError(
                f"{_where(what, path, lineno)}: cannot read the audio header of {resolved} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); check the file or delete this line",
                path=path,
                line=lineno,
            ) from None
        file_duration = recording.duration
        if offset >= file_duration:
            raise ManifestError(
                f"{_where(what, path, lineno)}: 'offset' {offset} s is past the end of {resolved} "
                f"({file_duration:.3f} s); fix the offset or delete this line",
                path=path,
                line=lineno,
            )
        if duration is None:
            duration = file_duration - offset
        elif check:
            end = offset + duration
            # Without `offset`, NeMo reads the whole file, so the duration must match it; with an offset the
            # segment only has to fit inside the file.
            too_long = end > file_duration + duration_tolerance
            mismatch = (not has_offset) and abs(duration - file_duration) > duration_tolerance
            if too_long or mismatch:
                raise ManifestError(
                    f"{_where(what, path, lineno)}: 'duration' {duration} s"
                    + (f" from offset {offset} s" if has_offset else "")
                    + f" disagrees with the audio file {resolved} ({file_duration:.3f} s) by more than the "
                    f"{duration_tolerance} s tolerance; fix the duration (or drop the key to read it from the file), "
                    "or raise the tolerance (--duration-tolerance)",
                    path=path,
                    line=lineno,
                )
            duration = min(duration, file_duration - offset)
    else:
        sampling_rate = int(sr_field) if sr_field else int(sample_rate)
        end = offset + duration
        recording = Recording(
            id=rec_id,
            sources=[AudioSource(type="file", channels=[0], source=resolved)],
            sampling_rate=sampling_rate,
            num_samples=compute_num_samples(end, sampling_rate),
            duration=end,
        )
    custom = data or None
    if recording.num_channels == 1:
        cut: Cut = MonoCut(
            id=cut_id, start=offset, duration=duration, channel=recording.channel_ids[0], recording=recording, custom=custom
        )
    else:
        cut = MultiCut(id=cut_id, start=offset, duration=duration, channel=recording.channel_ids, recording=recording, custom=custom)
    return cut


# ----------------------------------------------------------------------------------------------------------------
# The lazy source
# ----------------------------------------------------------------------------------------------------------------


def _iter_jsonl(path: str, what: str) -> Iterator[Tuple[int, dict]]:
    if path.endswith(".gz"):
        # Before the first line, not at the end of the file: a file truncated since it was opened (a copy
        # overwritten during the run) stops the pass before any of its cuts is trained on. Cached: one os.stat
        # when unchanged.
        check_gzip_complete(path, what)
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                yield lineno, _parse_json_line(line, path, lineno, what)
    except OSError as err:
        if err.errno is not None:
            raise ManifestError(f"{_where(what, path)}: cannot read the manifest: {describe_os_error(err)}",
                                path=path) from None
        raise ManifestError(
            f"{_where(what, path)}: cannot read the manifest ({err}); it may be truncated or not a JSON-lines file",
            path=path,
        ) from err
    except (EOFError, UnicodeDecodeError) as err:
        raise ManifestError(
            f"{_where(what, path)}: cannot read the manifest ({err}); it may be truncated or not a JSON-lines file",
            path=path,
        ) from err


def _iter_lhotse_file(path: str, what: str) -> Iterator[Cut]:
    for lineno, data in _iter_jsonl(path, what):
        try:
            item = deserialize_item(data)
        except Exception as err:
            raise ManifestError(
                f"{_where(what, path, lineno)}: not a valid Lhotse cut or recording ({type(err).__name__}: {err}); "
                "regenerate the manifest or delete this line",
                path=path,
                line=lineno,
            ) from None
        if isinstance(item, Recording):
            yield item.to_cut()
        elif isinstance(item, Cut):
            yield item
        elif isinstance(item, SupervisionSegment):
            raise ManifestError(
                f"{_where(what, path, lineno)}: a supervision segment in a cut/recording manifest; give a CutSet "
                "(`lhotse cut simple -r RECORDINGS -s SUPERVISIONS CUTS.jsonl.gz`)",
                path=path,
                line=lineno,
            )
        else:
            raise ManifestError(
                f"{_where(what, path, lineno)}: unexpected Lhotse item {type(item).__name__}; expected cuts or "
                "recordings",
                path=path,
                line=lineno,
            )


_warned_probe = set()


def _iter_nemo_file(path: str, what: str, sample_rate: int) -> Iterator[Cut]:
    for lineno, data in _iter_jsonl(path, what):
        if data.get("duration") is None and path not in _warned_probe:
            _warned_probe.add(path)
            log.warning(
                "%s: %s has lines without 'duration'; their audio headers are read on every pass. "
                "Convert once with `nest-ssl manifest from-nemo` to avoid it.",
                what,
                path,
            )
        yield nemo_line_to_cut(data, path=path, lineno=lineno, what=what, sample_rate=sample_rate)


def _iter_shar_part(part: ManifestPart) -> Iterator[Cut]:
    from lhotse.shar.readers.lazy import LazySharIterator

    fields = {"cuts": [part.path]}
    for k, v in part.fields:
        fields[k] = [v]
    yield from LazySharIterator(fields=fields)


def _count_lines(path: str) -> int:
    n = 0
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                n += 1
    return n


class ManifestSource(Dillable):
    """Lazy iterable of cuts over manifest parts; re-reads the files on every iteration (constant memory).

    Part order: as given, unless `iter_parts(order_seed)` asks for a shuffled order (the sampler uses this to
    shuffle files/shards reproducibly per epoch, rank and worker).
    """

    def __init__(self, parts: Sequence[ManifestPart], *, what: str = "manifest", sample_rate: int = 16000) -> None:
        self.parts = list(parts)
        self.what = what
        self.sample_rate = sample_rate
        self._len: Optional[int] = None

    @property
    def is_shar(self) -> bool:
        return any(p.kind == "shar" for p in self.parts)

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    def metadata_only(self) -> "ManifestSource":
        """The same parts without Shar data fields: cuts only, no audio read (for statistics)."""
        parts = [ManifestPart(p.kind, p.path) if p.kind == "shar" else p for p in self.parts]
        return ManifestSource(parts, what=self.what, sample_rate=self.sample_rate)

    def iter_parts(self, order_seed: Optional[int] = None) -> Iterator[Cut]:
        parts = self.parts
        if order_seed is not None and len(parts) > 1:
            parts = parts.copy()
            random.Random(order_seed).shuffle(parts)
        for part in parts:
            if part.kind == "nemo":
                yield from _iter_nemo_file(part.path, self.what, self.sample_rate)
            elif part.kind == "lhotse":
                yield from _iter_lhotse_file(part.path, self.what)
            else:
                yield from _iter_shar_part(part)

    def __iter__(self) -> Iterator[Cut]:
        return self.iter_parts(None)

    def iter_durations(self) -> Iterator[float]:
        """Cut durations in part order, from the manifest lines alone: no Cut objects are built (about 3x faster
        than iterating cuts) and no audio is read, except the header of a NeMo line that has no `duration`. For
        statistics such as bucket bins; the rest of each line is not validated."""
        for part in self.parts:
            if part.kind == "nemo":
                for lineno, data in _iter_jsonl(part.path, self.what):
                    if data.get("duration") is None:
                        yield nemo_line_to_cut(data, path=part.path, lineno=lineno, what=self.what,
                                               sample_rate=self.sample_rate).duration
                    else:
                        yield _number(data["duration"], "duration", part.path, lineno, self.what)
                continue
            # Lhotse cuts or recordings, or a Shar shard's cuts file (its data fields are not opened).
            for lineno, data in _iter_jsonl(part.path, self.what):
                if data.get("duration") is not None:
                    yield _number(data["duration"], "duration", part.path, lineno, self.what)
                    continue
                # E.g. a MixedCut, whose duration follows from its tracks: build it.
                try:
                    item = deserialize_item(data)
                except Exception as err:
                    raise ManifestError(
                        f"{_where(self.what, part.path, lineno)}: not a valid Lhotse cut or recording "
                        f"({type(err).__name__}: {err}); regenerate the manifest or delete this line",
                        path=part.path,
                        line=lineno,
                    ) from None
                yield float(item.duration)

    def __len__(self) -> int:
        # Counted once (one pass over the text, no JSON parsing) and cached: CutMix asks for len() per batch.
        if self._len is None:
            self._len = sum(_count_lines(p.path) for p in self.parts)
        return self._len

    def __add__(self, other):
        from lhotse.lazy import LazyIteratorChain

        return LazyIteratorChain(self, other)


def open_cutset(
    spec: PathSpec,
    *,
    what: str = "train_ds.manifest_filepath",
    sample_rate: int = 16000,
    metadata_only: bool = False,
) -> CutSet:
    """Open one or more manifests as one lazy CutSet.

    spec: a path, a comma-separated string of paths, or a list of paths. Each path is a NeMo JSON-lines manifest,
    a Lhotse CutSet or RecordingSet (.jsonl/.jsonl.gz; recordings become one cut each) or a Lhotse Shar directory.
    what: the config key being read, used in error messages (e.g. "train_ds.noise_manifest").
    sample_rate: assumed sampling rate of NeMo lines that give `duration` but no `sampling_rate` (no header read).
    metadata_only: for Shar directories read only the cuts (no audio tar); for statistics such as bucket bins.

    The files are checked up front (exist, non-empty, recognised format, first line parses); later lines are
    checked as they stream, raising ManifestError with file:line.
    """
    return CutSet(open_source(spec, what=what, sample_rate=sample_rate, metadata_only=metadata_only))


def open_source(
    spec: PathSpec,
    *,
    what: str = "train_ds.manifest_filepath",
    sample_rate: int = 16000,
    metadata_only: bool = False,
) -> ManifestSource:
    """The ManifestSource behind `open_cutset` (same arguments): what the sampler reads, with its parts (files or
    Shar shards) known, so that it can order and split them."""
    parts = resolve_parts(spec, what=what, metadata_only=metadata_only)
    return ManifestSource(parts, what=what, sample_rate=sample_rate)
