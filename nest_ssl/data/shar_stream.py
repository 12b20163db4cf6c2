"""Reading one Lhotse Shar shard cut by cut, with its data fields or without them, and attaching them later.

The iterable (Shar) training stream reads shards through `iter_shard` instead of Lhotse's LazySharIterator: the
same cuts with the same data (the cuts file line by line, each tar member pair attached to its cut, `shard_origin`
set), but the data of a cut can be left out while the stream is only being replayed to a checkpointed position
(`with_data()` false: the tars are not read) and filled in later by cut id (`attach`). A tar is opened for random
access, so starting to read it at the n-th cut seeks over the member headers before it without reading their data.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from lhotse.cut import Cut
from lhotse.lazy import LazyJsonlIterator, LazyManifestIterator
from lhotse.serialization import decode_json_line, deserialize_item

from nest_ssl.data.lhotse_adapter import fill_shar_placeholder, mark_shard_origin
from nest_ssl.data.manifests import ManifestPart

__all__ = ["FieldReader", "attach", "iter_shard"]

# A tar member pair of one cut: (data member, metadata member); None members for "no value" (.nodata/.nometa).
_Pair = Tuple[Optional[tarfile.TarInfo], Optional[tarfile.TarInfo], str]


class FieldReader:
    """The values of one data field of one shard (a tar of member pairs or a JSONL file), by cut position.

    Opened on first use. `at(i)` must be asked with increasing i; positions skipped are passed over without
    reading their data (tar member headers only). `by_id(cut_id)` reads one value anywhere in the shard.
    """

    def __init__(self, field: str, path: str) -> None:
        self.field, self.path = field, path
        self.is_tar = ".tar" in Path(path).name
        self._tar: Optional[tarfile.TarFile] = None
        self._members: Optional[Iterator[_Pair]] = None
        self._lines: Optional[Iterator[dict]] = None
        self._next = 0  # position of the next pair/line to come from the sequential reader
        self._index: Optional[Dict[str, _Pair]] = None
        self.opened = False

    # -- tar ------------------------------------------------------------------------------------------------------
    def _open_tar(self) -> tarfile.TarFile:
        if self._tar is None:
            self._tar = tarfile.open(self.path, mode="r:*")  # random access: iterating seeks over member data
            self.opened = True
        return self._tar

    def _pairs(self, tar: tarfile.TarFile) -> Iterator[_Pair]:
        pending: List[tarfile.TarInfo] = []
        while True:
            info = tar.next()
            if info is None:
                break
            pending.append(info)
            if len(pending) == 2:
                data, meta = pending
                pending = []
                p = Path(data.name)
                yield (None if p.suffix == ".nodata" else data, None if Path(meta.name).suffix == ".nometa" else meta,
                       str(p.parent / p.stem))
        if pending:
            raise RuntimeError(f"{self.path}: uneven number of tar members (expected pairs of data + JSON metadata)")

    def _value_from_pair(self, pair: _Pair):
        data_info, meta_info, _ = pair
        if meta_info is None:
            return None
        tar = self._open_tar()
        data = tar.extractfile(data_info).read() if data_info is not None else b""
        manifest = deserialize_item(decode_json_line(tar.extractfile(meta_info).read().decode("utf-8")))
        fill_shar_placeholder(manifest=manifest, data=data, tarpath=data_info.name if data_info else meta_info.name)
        return manifest

    # -- positions ------------------------------------------------------------------------------------------------
    def at(self, position: int, cut_id: str):
        """The field's value for the cut at `position` (None: that cut has none)."""
        if self.is_tar:
            if self._members is None:
                self._members = self._pairs(self._open_tar())
            while True:
                pair = next(self._members, None)
                if pair is None:
                    raise RuntimeError(f"{self.path}: fewer tar members than cuts in the shard's cuts file")
                self._next += 1
                if self._next - 1 == position:
                    break
            if pair[2] != cut_id:
                raise RuntimeError(f"{self.path}: cut {cut_id!r} has tar member {pair[2]!r} for field "
                                   f"'{self.field}'; the shard's cuts and tar files do not match")
            return self._value_from_pair(pair)
        if self._lines is None:
            self._lines = iter(LazyJsonlIterator(self.path))
            self.opened = True
        while True:
            item = next(self._lines, None)
            if item is None:
                raise RuntimeError(f"{self.path}: fewer lines than cuts in the shard's cuts file")
            self._next += 1
            if self._next - 1 == position:
                break
        if item.get("cut_id") != cut_id:
            raise RuntimeError(f"{self.path}: line for cut {item.get('cut_id')!r} where {cut_id!r} was expected")
        return item.get(self.field)

    def by_id(self, cut_id: str):
        """The field's value for `cut_id`, read by random access (the member headers are indexed once)."""
        if self._index is None:
            self._index = {}
            if self.is_tar:
                # A second TarFile on the same path: the sequential one keeps its position.
                with tarfile.open(self.path, mode="r:*") as tar:
                    self._index = {pair[2]: pair for pair in self._pairs(tar)}
            else:
                self._index = {item.get("cut_id"): item for item in LazyJsonlIterator(self.path)}
            self.opened = True
        entry = self._index.get(cut_id)
        if entry is None:
            raise RuntimeError(f"{self.path}: no value for cut {cut_id!r} in field '{self.field}'")
        if not self.is_tar:
            return entry.get(self.field)
        return self._value_from_pair(entry)

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._tar, self._members, self._lines = None, None, None


def iter_shard(part: ManifestPart, with_data: Callable[[], bool], on_skipped: Callable[[Cut, "ShardHandle"], None]
               ) -> Iterator[Cut]:
    """The cuts of one Shar shard in file order. While `with_data()` is false (asked per cut) the cut comes
    without its data fields and `on_skipped(cut, handle)` is told, so that `attach` can fill them in later."""
    handle = ShardHandle(part)
    try:
        for position, cut in enumerate(LazyManifestIterator(part.path)):
            if with_data():
                for reader in handle.readers.values():
                    value = reader.at(position, cut.id)
                    if value is not None:
                        setattr(cut, reader.field, value)
            else:
                on_skipped(cut, handle)
            mark_shard_origin(cut, part.path)  # what LazySharIterator sets for a shard read once
            yield cut
    finally:
        handle.close_sequential()


class ShardHandle:
    """The field readers of one shard, kept while some of its cuts still wait for their data."""

    def __init__(self, part: ManifestPart) -> None:
        self.part = part
        self.readers: Dict[str, FieldReader] = {k: FieldReader(k, v) for k, v in part.fields}

    @property
    def opened(self) -> bool:
        return any(r.opened for r in self.readers.values())

    def close_sequential(self) -> None:
        for r in self.readers.values():
            r.close()


def attach(cuts: Iterable[Cut], pending: Dict[str, ShardHandle]) -> int:
    """Fill in the data fields of the cuts listed in `pending` (cut id -> its shard), removing them from it.
    Returns how many cuts got their data."""
    n = 0
    for cut in cuts:
        handle = pending.pop(cut.id, None)
        if handle is None:
            continue
        for reader in handle.readers.values():
            value = reader.by_id(cut.id)
            if value is not None:
                setattr(cut, reader.field, value)
        n += 1
    return n
