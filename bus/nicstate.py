"""A NIC's state: what its heartbeats say, what hostd and the CLI show. Sans-I/O.

Theory of operation: a NIC starts ``STARTING`` (no policy or no map yet). The host's first map
makes it ``RESYNCING`` until every live sibling has sent it a snapshot of its state, then
``UP``: in the team, the host may fail VPIDs back to it. A loop that stood still as long as the
host takes to declare it down is ``FENCED`` (it may have lost VPIDs meanwhile) until the host's
map says what it owns; then it resyncs before it rejoins. Five signals move a NIC through the one
table ``TRANSITIONS``; a missing (state, signal) pair is a bug, not a silent no-op.

The other values are what others say of a NIC, never a NIC of itself: ``DOWN`` (missed
heartbeats or disconnected), ``BOOTING`` (nothing said yet: the old state of its first change)
and ``WAITING_FOR_POLICY`` (its stats before the host's policy came; its heartbeats say
``STARTING``). The values are the strings on the bus, in the logs and in ``nicteam status``.
"""

from __future__ import annotations

import enum
from typing import Final


class NicState(enum.StrEnum):
    """A NIC's state; the value is its wire and log form."""

    BOOTING = "booting"
    WAITING_FOR_POLICY = "waiting-for-policy"
    STARTING = "starting"
    RESYNCING = "resyncing"
    UP = "up"
    FENCED = "fenced"
    DOWN = "down"


class NicSignal(enum.Enum):
    """What moves a NIC from one state to the next."""

    MAPPED = "mapped"  # the host's first map arrived
    RESYNC = "resync"  # a resync of the siblings' state started
    RESYNCED = "resynced"  # every live sibling's snapshot is in (or the resync gave up waiting)
    STALLED = "stalled"  # the loop stood still long enough to have lost VPIDs: fence
    UNFENCED = "unfenced"  # the host's map is known again


_STARTING, _RESYNCING, _UP, _FENCED = (
    NicState.STARTING,
    NicState.RESYNCING,
    NicState.UP,
    NicState.FENCED,
)

# A NIC in these states moves frames: it has a pipeline and a map, and is not fenced.
FORWARDING: Final = frozenset({_UP, _RESYNCING})

# Pairs left out cannot happen: the first map comes once, only a mapped NIC is fenced, only a
# fenced one unfenced, and a NIC that is UP has finished its resync.
TRANSITIONS: Final[dict[tuple[NicState, NicSignal], NicState]] = {
    (_STARTING, NicSignal.MAPPED): _RESYNCING,  # RESYNCED follows at once if it is done already
    (_STARTING, NicSignal.RESYNC): _STARTING,
    (_STARTING, NicSignal.RESYNCED): _STARTING,  # it still needs a map
    (_RESYNCING, NicSignal.RESYNC): _RESYNCING,
    (_RESYNCING, NicSignal.RESYNCED): _UP,
    (_RESYNCING, NicSignal.STALLED): _FENCED,
    (_UP, NicSignal.RESYNC): _RESYNCING,
    (_UP, NicSignal.STALLED): _FENCED,
    (_FENCED, NicSignal.RESYNC): _FENCED,
    (_FENCED, NicSignal.RESYNCED): _FENCED,  # a resync begun before the stall ended meanwhile
    (_FENCED, NicSignal.UNFENCED): _RESYNCING,  # RESYNCED follows at once if there is no sibling
}


class InvalidTransition(RuntimeError):
    """A signal the state cannot take: a bug in the NIC's control code."""


def next_state(state: NicState, signal: NicSignal) -> NicState:
    """The state `signal` moves `state` to (raises InvalidTransition for a missing pair)."""
    try:
        return TRANSITIONS[state, signal]
    except KeyError:
        raise InvalidTransition(f"{signal.value} in state {state.value}") from None
