"""The noise set as one memory-mapped PCM bank: decoded once, shared by every worker and rank through the page cache.

``build_noise_bank(noise_manifest, out_dir)`` (``nest-ssl noise bank``) decodes every entry of a noise manifest (at
the model's rate, downmixed to mono) into one raw little-endian int16 file plus a small JSON index:

    noise_bank.pcm          the entries' samples end to end (int16)
    noise_bank.json         sample rate, dtype, and per entry: id, offset and length in samples, the cut's start and
                            duration in seconds, the int16 scale
    rejects_noise_bank.tsv  entries left out (unreadable, NaN/Inf, empty), with the reason

Point ``train_ds.noise_manifest`` at the folder (or at its ``noise_bank.json``): :func:`open_noise` then returns a
:class:`NoiseBank`, which ``numpy.memmap``s the PCM file in each process on first use. A draw is a slice of the
mapping, so noise costs no decoding, and the pages are shared by all DataLoader workers and ranks of a machine.

Samples: int16 with a per-entry scale, 32768 (the PCM_16 convention, so audio decoded from 16-bit WAV/FLAC is stored
exactly) unless the entry peaks at or above 1.0, then 32767 / peak. So the bank gives the decoded samples exactly for
16-bit sources at the model's rate, and within half a quantisation step (0.5 / scale) otherwise.

Draws: :meth:`NoiseBank.sample` makes the same random draws, in the same order, as ``NoiseSet.sample`` (entry, offset
in seconds, the retries for silent spans, the white-noise fallback), and turns the offset into samples as lhotse does
(``compute_num_samples`` of the cut's start plus the offset). Given the same ``random.Random`` state, a bank of the
same manifest returns the samples ``NoiseSet`` decodes (tests/test_data_noise_bank.py).

Building resumes: committed entries are appended to ``noise_bank.partial.jsonl`` after their samples reach the
``.pcm.partial`` file; a rerun truncates the data to the last committed entry and continues with the next one.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

import numpy as np
import torch
from lhotse.utils import compute_num_samples

from nest_ssl.data.noise import EmptyNoiseManifestError, NoiseSet, _entries, _open_cutset, _split_spec
from nest_ssl.errors import UserError

log = logging.getLogger("nest_ssl.data")

INDEX_NAME = "noise_bank.json"
DATA_NAME = "noise_bank.pcm"
REJECTS_NAME = "rejects_noise_bank.tsv"
FORMAT = "nest-ssl noise bank"
VERSION = 1


class NoiseBankError(UserError, ValueError):
    """A noise bank folder that cannot be used (missing or foreign files, another sample rate)."""


def bank_index_path(spec: Any) -> Optional[Path]:
    """The index file when ``spec`` names a noise bank (its folder or its ``noise_bank.json``), else None."""
    if not isinstance(spec, (str, os.PathLike)):
        return None
    path = Path(spec)
    if path.is_dir() and (path / INDEX_NAME).is_file():
        return path / INDEX_NAME
    if path.name == INDEX_NAME and path.is_file():
        return path
    return None


def _quantise(audio: np.ndarray) -> tuple[np.ndarray, float]:
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    scale = 32768.0 if peak < 1.0 else 32767.0 / peak
    q = np.clip(np.rint(audio.astype(np.float64) * scale), -32768, 32767).astype("<i2")
    return q, scale


@dataclass
class BankStats:
    entries: int = 0
    rejected: int = 0
    samples: int = 0
    resumed_from: int = 0  # entries found committed by an earlier, interrupted run

    @property
    def bytes(self) -> int:
        return 2 * self.samples


def build_noise_bank(noise_manifest: Any, out_dir: Union[str, os.PathLike], *, sample_rate: int = 16000,
                     what: str = "noise manifest") -> BankStats:
    """Decodes the noise manifest (any form ``noise_manifest`` takes) into a bank in ``out_dir``; see module doc.

    Unreadable entries are skipped and listed in ``rejects_noise_bank.tsv``; a killed build resumes (module doc).
    """
    from nest_ssl.data.dataset import CutRejected, load_cut_audio  # the dataset's reader: same checks, same rate

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NoiseBankError(f"output {out} exists and is not a folder; choose a new folder for the noise bank")
    parts = _split_spec(noise_manifest)
    if not parts:
        raise NoiseBankError(f"{what}: no noise manifest given; name one (lhotse cuts, NeMo JSON or a Shar folder)")
    if any(bank_index_path(p) is not None for p in parts):
        raise NoiseBankError(f"{what} {noise_manifest} is already a noise bank; give the noise manifest it came from")
    out.mkdir(parents=True, exist_ok=True)
    index_path, data_path = out / INDEX_NAME, out / DATA_NAME
    if index_path.exists():
        raise NoiseBankError(f"{out} already holds a noise bank ({INDEX_NAME}); remove it or choose another folder")
    progress_path, partial_data = out / "noise_bank.partial.jsonl", out / (DATA_NAME + ".partial")

    entries = []
    for part in parts:
        part_entries = _entries(_open_cutset(part, what, sample_rate), str(part))
        if not part_entries:
            raise EmptyNoiseManifestError(f"{what} {part} is empty (no entries with audio); fill it with noise "
                                          "recordings or leave it out")
        entries.extend(part_entries)

    # Resume: the committed entries of an interrupted build (their samples are in the data file before the line).
    done: List[dict] = []
    if progress_path.exists():
        with open(progress_path, encoding="utf-8") as f:
            for line in f:
                try:
                    done.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut by the kill: that entry is redone
        with open(progress_path, "w", encoding="utf-8") as f:  # drop a cut line before appending after it
            f.writelines(json.dumps(d) + "\n" for d in done)
    committed = sum(d["length"] for d in done if d.get("length") is not None)
    with open(partial_data, "ab") as data:
        data.truncate(2 * committed)
    stats = BankStats(resumed_from=len(done))

    with open(partial_data, "ab") as data, open(progress_path, "a", encoding="utf-8") as progress:
        offset = committed
        for k in range(len(done), len(entries)):
            entry = entries[k]
            try:
                audio = load_cut_audio(entry.cut, sample_rate)
            except CutRejected as why:
                progress.write(json.dumps({"id": entry.cut.id, "rejected": str(why)}) + "\n")
                progress.flush()
                continue
            q, scale = _quantise(audio)
            data.write(q.tobytes())
            data.flush()
            rec = {"id": entry.cut.id, "offset": offset, "length": int(q.size), "start": float(entry.cut.start),
                   "duration": float(entry.duration), "scale": scale}
            progress.write(json.dumps(rec) + "\n")
            progress.flush()
            offset += int(q.size)
        os.fsync(data.fileno())

    with open(progress_path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    kept = [r for r in records if "rejected" not in r]
    rejects = [r for r in records if "rejected" in r]
    if not kept:
        raise EmptyNoiseManifestError(f"{what} {noise_manifest}: no entry could be read ({len(rejects)} rejected, "
                                      f"listed in {out / REJECTS_NAME}); fix the audio files")
    with open(out / REJECTS_NAME, "w", encoding="utf-8") as f:
        for r in rejects:
            f.write(f"{r['id']}\t{r['rejected']}\n")
    index = {
        "format": FORMAT, "version": VERSION, "sample_rate": int(sample_rate), "dtype": "int16", "data": DATA_NAME,
        "num_samples": int(sum(r["length"] for r in kept)), "source": ",".join(str(p) for p in parts),
        "ids": [r["id"] for r in kept], "offsets": [r["offset"] for r in kept], "lengths": [r["length"] for r in kept],
        "starts": [r["start"] for r in kept], "durations": [r["duration"] for r in kept],
        "scales": [r["scale"] for r in kept],
    }
    os.replace(partial_data, data_path)
    tmp = out / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index), encoding="utf-8")
    os.replace(tmp, index_path)  # the index last: a folder with an index is a complete bank
    progress_path.unlink()
    stats.entries, stats.rejected, stats.samples = len(kept), len(rejects), index["num_samples"]
    return stats


class NoiseBank:
    """Random noise clips drawn from a bank (see module doc); the drop-in for ``NoiseSet`` (``sample``, ``len``).

    Pickles without the mapping (DataLoader workers reopen it on first use), so it costs nothing to ship.
    """

    def __init__(self, directory: Union[str, os.PathLike], *, sample_rate: int, max_tries: int = 20,
                 max_zero_tries: int = 10, min_white_noise_db: float = -90.0, max_white_noise_db: float = -46.0,
                 what: str = "noise_manifest"):
        index_path = bank_index_path(directory)
        if index_path is None:
            raise NoiseBankError(f"{what}: {directory} is not a noise bank (no {INDEX_NAME}); build one with "
                                 "`nest-ssl noise bank NOISE_MANIFEST OUT_DIR`")
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise NoiseBankError(f"{what}: cannot read {index_path} ({err}); rebuild the bank") from None
        if index.get("format") != FORMAT or index.get("dtype") != "int16":
            raise NoiseBankError(f"{what}: {index_path} is not a {FORMAT} (int16); rebuild it with "
                                 "`nest-ssl noise bank`")
        if int(index["sample_rate"]) != int(sample_rate):
            raise NoiseBankError(
                f"{what}: the noise bank {index_path.parent} is at {index['sample_rate']} Hz, the model at "
                f"{sample_rate} Hz; rebuild it with `nest-ssl noise bank ... --sample-rate {sample_rate}`")
        self.directory = index_path.parent
        self.data_path = self.directory / index["data"]
        expected = 2 * int(index["num_samples"])
        size = self.data_path.stat().st_size if self.data_path.exists() else -1
        if size != expected:
            raise NoiseBankError(f"{what}: {self.data_path} has {size} bytes, its index expects {expected}; rebuild "
                                 "the bank (`nest-ssl noise bank`)")
        if not index["ids"]:
            raise EmptyNoiseManifestError(f"{what}: the noise bank {self.directory} has no entries")
        self.sample_rate = int(sample_rate)
        self.source = str(self.directory)
        self.ids: List[str] = list(index["ids"])
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)
        self.lengths = np.asarray(index["lengths"], dtype=np.int64)
        self.starts = [float(s) for s in index["starts"]]
        self.durations = [float(d) for d in index["durations"]]
        self.scales = np.asarray(index["scales"], dtype=np.float64)
        self.max_tries = max_tries
        self.max_zero_tries = max_zero_tries
        self.min_white_noise_db = min_white_noise_db
        self.max_white_noise_db = max_white_noise_db
        self._pcm: Optional[np.memmap] = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_pcm"] = None  # each process maps the file itself
        return state

    @property
    def pcm(self) -> np.memmap:
        if self._pcm is None:
            self._pcm = np.memmap(self.data_path, dtype="<i2", mode="r")
        return self._pcm

    def entry(self, k: int) -> np.ndarray:
        """All samples of entry ``k`` as float32 (what decoding its cut gives, see module doc)."""
        o, n = int(self.offsets[k]), int(self.lengths[k])
        return (self.pcm[o : o + n].astype(np.float32) / np.float32(self.scales[k])).astype(np.float32)

    def _read(self, k: int, num_samples: int, rng: random.Random) -> np.ndarray:
        """The int16 span NoiseSet._read would decode for entry k (same draws)."""
        o, length = int(self.offsets[k]), int(self.lengths[k])
        duration, start = self.durations[k], self.starts[k]
        need = num_samples / self.sample_rate
        first = compute_num_samples(start, self.sample_rate)
        piece = self.pcm[o : o + length]
        for _ in range(max(1, self.max_zero_tries)):
            if duration > need:
                offset = rng.uniform(0.0, duration - need)
                s = min(compute_num_samples(start + offset, self.sample_rate) - first, length)
                piece = self.pcm[o + s : o + min(s + num_samples, length)]
            else:
                piece = self.pcm[o : o + length]
            if piece.size and np.any(piece != 0):
                return piece
            if duration <= need:
                break
        return piece

    def sample(self, num_samples: int, rng: random.Random) -> torch.Tensor:
        """A float32 clip of exactly ``num_samples`` samples (tiled when the entry is shorter); NoiseSet.sample's
        semantics and draws."""
        num_samples = int(num_samples)
        for _ in range(self.max_tries):
            k = rng.randrange(len(self.ids))
            piece = self._read(k, num_samples, rng)
            if piece.size == 0:
                continue
            clip = torch.from_numpy(piece.astype(np.float32))
            clip.div_(float(self.scales[k]))
            if not torch.any(clip != 0):
                level_db = rng.uniform(self.min_white_noise_db, self.max_white_noise_db)
                gen = torch.Generator().manual_seed(rng.getrandbits(63))
                clip = torch.randn(clip.numel(), generator=gen) * (10.0 ** (level_db / 20.0))
            if clip.numel() < num_samples:
                clip = clip.repeat(-(-num_samples // clip.numel()))
            return clip[:num_samples]
        return torch.zeros(num_samples)


def check_noise_spec(spec: Any, sample_rate: int, what: str, check_manifests: Callable[[], None]) -> None:
    """The preflight's check of ``noise_manifest``: a bank is opened (index, data size, rate); manifests are
    checked by ``check_manifests``."""
    parts = _split_spec(spec)
    if any(bank_index_path(p) is not None for p in parts):
        open_noise(spec, sample_rate=sample_rate, what=what)
    else:
        check_manifests()


def open_noise(spec: Any, *, sample_rate: int, what: str = "noise_manifest") -> Union[None, NoiseSet, NoiseBank]:
    """``noise_manifest`` -> a NoiseBank when it names a bank folder (or its index), a NoiseSet for manifests, None
    for null. A list may not mix a bank with manifests (build one bank from all of them)."""
    if isinstance(spec, (NoiseSet, NoiseBank)):
        return spec
    parts = _split_spec(spec) if not hasattr(spec, "subset") else [spec]  # a CutSet is one part
    banks = [p for p in parts if bank_index_path(p) is not None]
    if banks:
        if len(parts) != 1:
            raise NoiseBankError(f"{what}: {spec} lists a noise bank with other noise sources; build one bank from "
                                 "all the noise manifests (`nest-ssl noise bank a.jsonl.gz,b.json OUT_DIR`)")
        return NoiseBank(banks[0], sample_rate=sample_rate, what=what)
    return NoiseSet.from_manifest(spec, sample_rate=sample_rate, what=what)
