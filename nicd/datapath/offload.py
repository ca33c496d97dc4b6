"""Which fast tiers may hold a path, and why not: one pure decision for install, trace and views.

The slow path sets each conntrack record's flags (`offload_flags`); a path through this NIC may
go down to the flow cache only when every record it depends on is `sw_ok` and established and
its action is a plain forward (the frame kept, or a VLAN tag pushed or popped), and on to the
eSwitch only when every record is also `hw_ok`; each tier then needs room (`room`). `offload`
answers for one path; the pipeline installs by it, the trace shows it, `flows --tier slow`
says with it why a record is left to the slow path.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from nicd.datapath.conntrack import CtRecord
from nicd.datapath.rules import Rule
from nicd.datapath.tiers import ExactMatchTable, FastKey, Tier
from wire.protocols import PROTO_TCP, PROTO_UDP


def offload_flags(rule: Rule | None, proto: int) -> tuple[bool, bool]:
    """(sw_ok, hw_capable): `inspect` is neither, `sw-only` no hardware, hardware speaks TCP/UDP."""
    inspect = rule is not None and rule.inspect
    sw_only = rule is not None and rule.sw_only
    sw_ok = not inspect
    return sw_ok, sw_ok and not sw_only and proto in (PROTO_TCP, PROTO_UDP)


class Room(enum.Enum):
    """Whether a tier could take one more path: switched off, full, or free."""

    OFF = "off"
    FULL = "full"
    FREE = "free"


def room(table: ExactMatchTable, key: FastKey | None) -> Room:
    """The room `table` has for the entry at `key` (replacing it always fits)."""
    if not table.capacity:
        return Room.OFF
    if key in table.entries or len(table.entries) < table.capacity:
        return Room.FREE
    return Room.FULL


class Why(enum.Enum):
    """Why a path is not (all the way) in the fast tiers; the value is how views say it."""

    NOT_FAST_FRAME = "not a fast-path frame (TCP SYN/FIN/RST, fragment, IP options, ...)"
    INSPECT = "rule inspects every packet"
    NOT_ESTABLISHED = "not established yet"
    NOT_EXPRESSIBLE = "action not expressible by the fast tiers"
    CACHE_OFF_OR_FULL = "cache off or full"
    ESWITCH_OFF = "eswitch off"
    NOT_HW_OK = "not hw_ok: sw-only rule or a protocol the hardware cannot do"
    ESWITCH_FULL = "eswitch full"


@dataclass(frozen=True, slots=True)
class Offload:
    """Where a path goes: the cache, the eSwitch, both or neither, and what kept it out."""

    cache: bool
    eswitch: bool
    why: tuple[Why, ...] = ()
    full: tuple[Tier, ...] = ()  # tiers the path qualified for but found full (counted)


def offload(
    records: Sequence[CtRecord], fast_frame: bool, expressible: bool, cache: Room, eswitch: Room
) -> Offload:
    """The fast tiers a forwarded path goes to.

    `records`: the conntrack records of the stages that allowed it; `fast_frame`: the frame has
    a fast key; `expressible`: its emits are plain forwards; `cache`, `eswitch`: their room.
    """
    if not fast_frame:
        return Offload(False, False, (Why.NOT_FAST_FRAME,))
    if not all(r.sw_ok for r in records):
        return Offload(False, False, (Why.INSPECT,))
    if not all(r.established for r in records):
        return Offload(False, False, (Why.NOT_ESTABLISHED,))
    if not expressible:
        return Offload(False, False, (Why.NOT_EXPRESSIBLE,))
    hw_ok = all(r.hw_ok for r in records)
    in_cache = cache is Room.FREE
    in_eswitch = eswitch is Room.FREE and hw_ok
    why = [] if in_cache else [Why.CACHE_OFF_OR_FULL]
    full = [Tier.CACHE] if cache is Room.FULL else []
    if eswitch is Room.OFF:
        why.append(Why.ESWITCH_OFF)
    elif not hw_ok:
        why.append(Why.NOT_HW_OK)
    elif not in_eswitch:
        why.append(Why.ESWITCH_FULL)
        full.append(Tier.ESWITCH)
    return Offload(in_cache, in_eswitch, tuple(why), tuple(full))
