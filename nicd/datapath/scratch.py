"""Scratch stand-ins for the tables a dry run of the pipeline writes (see `Pipeline.dry_copy`).

Each one answers reads as the real table does and takes the writes itself, at a cost that does
not grow with the real table: conntrack copies only the records the traced frame touches, a
fast tier copies only the entries the dry run reads (the frame's own, and those of a record it
evicts, whose pending hits the eviction reads back into the record copies).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TypeVar, cast, overload

from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.tiers import ExactMatchTable, FastKey, PathEntry, TierStats
from wire.frames import Packet

Table = TypeVar("Table", bound=ExactMatchTable)
_T = TypeVar("_T")
KeysOf = dict[int, set[FastKey]]  # id(record) -> the fast-tier keys that depend on it


class ScratchConntrack(ConntrackTable):
    """Conntrack over `real`: a real record is looked up as a copy of it, new ones live here.

    Room is what `real` has left, so a create fails here exactly when it would fail there. A
    copy carries what the pipeline indexes by record identity: `real_keys_of` (the real
    pipeline's) seeds `keys_of` (the dry copy's) with the copy's fast-tier keys.
    """

    def __init__(self, real: ConntrackTable, real_keys_of: KeysOf, keys_of: KeysOf) -> None:
        super().__init__(real.timeouts, max(real.limit - len(real), 0))
        self.real = real
        self._copies: dict[int, CtRecord] = {}  # id(real record) -> its copy
        self._real_keys_of = real_keys_of
        self._keys_of = keys_of

    def lookup(self, zone: int, pkt: Packet) -> tuple[CtRecord | None, bool]:
        """The copy of the real record, else a record created in this scratch table."""
        rec, is_reply = self.real.lookup(zone, pkt)
        if rec is None:
            return super().lookup(zone, pkt)
        return self.copy_of(rec), is_reply

    def copy_of(self, rec: CtRecord) -> CtRecord:
        """The copy of real record `rec`, made on first use (with its fast-tier keys)."""
        mine = self._copies.get(id(rec))
        if mine is None:
            mine = self._copies[id(rec)] = copy.copy(rec)
            keys = self._real_keys_of.get(id(rec))
            if keys:
                self._keys_of[id(mine)] = set(keys)
        return mine

    def is_new(self, rec: CtRecord) -> bool:
        """True for a record created in this scratch table (the real table has no such one)."""
        return self.get(rec.key) is rec


class _Overlay(dict[FastKey, PathEntry]):
    """A real tier's entries as a dry run sees them: an entry is copied (`adopt`) when first
    read, writes and evictions stay here. Sized like the real table, so a room check (`key in`,
    `len`) answers as it would. Iterating lists only the entries read so far."""

    def __init__(self, real: dict[FastKey, PathEntry], adopt: EntryCopies) -> None:
        super().__init__()
        self._real = real
        self._adopt = adopt
        self._gone: set[FastKey] = set()  # evicted here: the real entry no longer shows
        self._size = len(real)

    def _load(self, key: FastKey) -> bool:
        """Whether `key` has an entry, copying the real one in on first use."""
        if dict.__contains__(self, key):
            return True
        entry = self._real.get(key) if key not in self._gone else None
        if entry is None:
            return False
        dict.__setitem__(self, key, self._adopt(entry))
        return True

    def __contains__(self, key: object) -> bool:
        return type(key) is tuple and self._load(cast(FastKey, key))

    def __getitem__(self, key: FastKey) -> PathEntry:
        if not self._load(key):
            raise KeyError(key)
        return dict.__getitem__(self, key)

    @overload
    def get(self, key: FastKey, default: None = None, /) -> PathEntry | None: ...
    @overload
    def get(self, key: FastKey, default: PathEntry, /) -> PathEntry: ...
    @overload
    def get(self, key: FastKey, default: _T, /) -> PathEntry | _T: ...
    def get(self, key: FastKey, default: object = None, /) -> object:
        return dict.__getitem__(self, key) if self._load(key) else default

    def __setitem__(self, key: FastKey, entry: PathEntry) -> None:
        if not self._load(key):
            self._size += 1
        self._gone.discard(key)
        dict.__setitem__(self, key, entry)

    def __delitem__(self, key: FastKey) -> None:
        if not self._load(key):
            raise KeyError(key)
        dict.__delitem__(self, key)
        self._gone.add(key)
        self._size -= 1

    def __len__(self) -> int:
        return self._size


class EntryCopies:
    """Copies real path entries for a dry run, once each: the tiers share a copy where they
    share an entry (so it is read back once, as for real); its records are conntrack copies."""

    def __init__(self, ct: ScratchConntrack) -> None:
        self.ct = ct
        self._copies: dict[int, PathEntry] = {}  # id(real entry) -> its copy

    def __call__(self, entry: PathEntry) -> PathEntry:
        mine = self._copies.get(id(entry))
        if mine is None:
            mine = self._copies[id(entry)] = copy.copy(entry)
            mine.records = tuple(map(self.ct.copy_of, entry.records))
        return mine


def scratch_table(table: Table, copies: EntryCopies, key: FastKey | None) -> Table:
    """`table` as a dry run for the frame with `key` sees it: own counters, entries copied as
    it reads them (the one at `key` at once)."""
    entries = _Overlay(table.entries, copies)
    if key is not None:
        entries.get(key)
    return dataclasses.replace(table, entries=entries, stats=TierStats())
