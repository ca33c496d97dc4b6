"""Scratch stand-ins for the tables a dry run of the pipeline writes (see `Pipeline.dry_copy`).

Each one answers reads as the real table does and takes the writes itself, at a cost that does
not grow with the real table: conntrack copies only the records the traced frame touches, a
fast tier copies only the entry at the traced frame's key.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import TypeVar

from nicd.datapath.conntrack import ConntrackTable, CtRecord
from nicd.datapath.tiers import ExactMatchTable, FastKey, PathEntry, TierStats
from wire.frames import Packet

Table = TypeVar("Table", bound=ExactMatchTable)


class ScratchConntrack(ConntrackTable):
    """Conntrack over `real`: a real record is looked up as a copy of it, new ones live here.

    Room is what `real` has left, so a create fails here exactly when it would fail there.
    """

    def __init__(self, real: ConntrackTable) -> None:
        super().__init__(real.timeouts, max(real.limit - len(real), 0))
        self.real = real
        self._copies: dict[int, CtRecord] = {}  # id(real record) -> its copy

    def lookup(self, zone: int, pkt: Packet) -> tuple[CtRecord | None, bool]:
        """The copy of the real record, else a record created in this scratch table."""
        rec, is_reply = self.real.lookup(zone, pkt)
        if rec is None:
            return super().lookup(zone, pkt)
        mine = self._copies.get(id(rec))
        if mine is None:
            mine = self._copies[id(rec)] = copy.copy(rec)
        return mine, is_reply

    def is_new(self, rec: CtRecord) -> bool:
        """True for a record created in this scratch table (the real table has no such one)."""
        return self.get(rec.key) is rec


class _Peek(dict[FastKey, PathEntry]):
    """At most the one entry a dry run may hit, copied; sized like the real table, so a room
    check (`key in`, `len`) answers as the real table would."""

    def __init__(self, real: dict[FastKey, PathEntry], key: FastKey | None) -> None:
        entry = real.get(key) if key is not None else None
        super().__init__({key: copy.copy(entry)} if key is not None and entry is not None else {})
        self._size = len(real)

    def __len__(self) -> int:
        return self._size


def scratch_table(table: Table, key: FastKey | None) -> Table:
    """`table` as a dry run for the frame with `key` sees it: own counters, own entry copy."""
    return dataclasses.replace(table, entries=_Peek(table.entries, key), stats=TierStats())
