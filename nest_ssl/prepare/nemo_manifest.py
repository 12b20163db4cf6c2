"""NeMo JSON-lines manifest -> Lhotse CutSet (`nest-ssl manifest from-nemo IN OUT`), streaming, one pass.

Each line becomes the cut the trainer's NeMo reader makes of it (the same `nemo_line_to_cut`: id from the audio path,
`offset`/`duration` segments as cuts of the file, other keys in `cut.custom`), with the audio header read once and
checked: the file exists, `duration` (and `offset`) agree with it within a tolerance, a missing duration is read
from it. Relative audio paths are resolved against the manifest's folder and written absolute.

A bad line does not stop the conversion: it is left out and listed, with its line number and the reason, in
`rejects_<name>.tsv` next to the output (the layout of the LibriLight preparation's rejects files), so nothing is
dropped silently. The output is written under a temporary name and renamed at the end, so an interrupted run leaves
no half-written CutSet.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Union

from lhotse import CutSet

from nest_ssl.data.manifests import (
    DEFAULT_DURATION_TOLERANCE,
    ManifestError,
    _first_record,
    _kind_of_record,
    _parse_json_line,
    check_gzip_complete,
    nemo_line_to_cut,
)

REJECTS_HEADER = "manifest\tline\taudio_filepath\treason\n"

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Conversion:
    """What `convert_nemo_manifest` did: cuts written, lines rejected (listed in `rejects_path`)."""

    written: int
    rejected: int
    rejects_path: str


def rejects_path_for(out_path: PathLike) -> str:
    """`<folder of OUT>/rejects_<OUT's name without .jsonl/.json/.gz>.tsv`."""
    folder, name = os.path.split(os.path.abspath(os.fspath(out_path)))
    for ext in (".gz", ".jsonl", ".json"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return os.path.join(folder, f"rejects_{name}.tsv")


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _tsv(text: object) -> str:
    return str(text).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def _reason(err: ManifestError, path: str, lineno: int) -> str:
    # The message starts with "<what>: <path>:<line>: "; the rejects file has its own columns for those.
    text = str(err)
    marker = f"{path}:{lineno}: "
    return text.split(marker, 1)[1] if marker in text else text


def convert_nemo_manifest(
    in_path: PathLike,
    out_path: PathLike,
    *,
    duration_tolerance: float = DEFAULT_DURATION_TOLERANCE,
    what: str = "manifest from-nemo",
) -> Conversion:
    """Stream the NeMo manifest `in_path` into the Lhotse CutSet `out_path` (.jsonl or .jsonl.gz).

    Bad lines are left out and listed in `rejects_path_for(out_path)`; raises ManifestError (and writes nothing at
    `out_path`) when the input cannot be read as a whole, when `out_path` is the input, or when no line is left.
    """
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    rejects_path = rejects_path_for(out_path)
    if not os.path.isfile(in_path):
        kind = "is a directory, not a manifest" if os.path.isdir(in_path) else "not found"
        raise ManifestError(f"{what}: input manifest {in_path} {kind}; check the path", path=in_path)
    for target, name in ((out_path, "output"), (rejects_path, "rejects file")):
        if _same_file(in_path, target):
            raise ManifestError(
                f"{what}: the {name} {target} is the input manifest {in_path}; writing it would destroy the input: "
                "give another output path (e.g. cuts.jsonl.gz)",
                path=in_path,
            )
    if os.path.isdir(out_path):
        raise ManifestError(f"{what}: the output {out_path} is a directory; give a file name such as "
                            f"{os.path.join(out_path, 'cuts.jsonl.gz')}", path=out_path)
    if in_path.endswith(".gz"):
        check_gzip_complete(in_path, what)
    lineno, first = _first_record(in_path, what)
    if first is None:
        raise ManifestError(f"{what}: {in_path}: manifest is empty (no JSON lines); nothing to convert", path=in_path)
    if _kind_of_record(first) != "nemo":
        raise ManifestError(
            f"{what}: {in_path}:{lineno}: not a NeMo manifest line (no 'audio_filepath'); this command converts "
            "NeMo JSON-lines manifests",
            path=in_path,
            line=lineno,
        )
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    suffix = ".jsonl.gz" if out_path.endswith(".gz") else ".jsonl"
    tmp_path = os.path.join(out_dir, f".{os.path.basename(out_path)}.partial{suffix}")
    written = rejected = 0
    opener = gzip.open if in_path.endswith(".gz") else open
    try:
        with opener(in_path, "rb") as f, open(rejects_path, "w", encoding="utf-8") as rej, \
                CutSet.open_writer(tmp_path, overwrite=True) as writer:
            rej.write(REJECTS_HEADER)
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                audio = ""
                try:
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as err:
                        raise ManifestError(f"{in_path}:{lineno}: not UTF-8 text ({err.reason} at byte {err.start})")
                    data = _parse_json_line(line, in_path, lineno, what)
                    audio = data.get("audio_filepath", data.get("audio_filename", ""))
                    cut = nemo_line_to_cut(data, path=in_path, lineno=lineno, what=what, check=True,
                                           duration_tolerance=duration_tolerance)
                except ManifestError as err:
                    rej.write(f"{_tsv(in_path)}\t{lineno}\t{_tsv(audio)}\t{_tsv(_reason(err, in_path, lineno))}\n")
                    rejected += 1
                    continue
                writer.write(cut)
                written += 1
        if written == 0:
            raise ManifestError(
                f"{what}: {in_path}: none of its {rejected} line(s) could be converted, so nothing was written to "
                f"{out_path}; the reason for each is in {rejects_path}",
                path=in_path,
            )
        os.replace(tmp_path, out_path)
    except (EOFError, gzip.BadGzipFile) as err:  # the input's gzip data; OSErrors of the files go to the caller
        raise ManifestError(f"{what}: {in_path}: cannot read the manifest ({err}); re-create or re-copy it",
                            path=in_path) from None
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return Conversion(written=written, rejected=rejected, rejects_path=rejects_path)
