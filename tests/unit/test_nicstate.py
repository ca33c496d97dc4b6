"""The NIC state machine's table, and the wire form of its states."""

from __future__ import annotations

import pytest

from bus.codec import decode_untrusted, encode
from bus.messages import Heartbeat
from bus.nicstate import (
    FORWARDING,
    TRANSITIONS,
    InvalidTransition,
    NicSignal,
    NicState,
    next_state,
)

# The states a NIC says of itself; the others are what hostd and the CLI say of it.
OWN = {NicState.STARTING, NicState.RESYNCING, NicState.UP, NicState.FENCED}


def test_the_wire_form_of_every_state_is_the_string_of_today() -> None:
    assert {s.value for s in NicState} == {
        "booting", "waiting-for-policy", "starting", "resyncing", "up", "fenced", "down",
    }  # fmt: skip
    # Equal to its string, so a state decoded from a reply as a plain str compares as itself.
    decoded: dict[str, str] = {"state": "up"}
    assert decoded["state"] == NicState.UP and f"{NicState.FENCED}" == "fenced"


def test_a_heartbeat_carries_the_state_as_its_string_and_decodes_to_the_enum() -> None:
    data = encode(Heartbeat("nic1", 1, 2, NicState.RESYNCING))
    assert b"resyncing" in data
    msg = decode_untrusted(data)
    assert isinstance(msg, Heartbeat) and msg.state is NicState.RESYNCING


def test_the_table_moves_only_between_a_nics_own_states() -> None:
    for (state, _signal), new in TRANSITIONS.items():
        assert state in OWN and new in OWN


def test_a_nic_forwards_only_up_or_resyncing() -> None:
    assert {NicState.UP, NicState.RESYNCING} == FORWARDING


@pytest.mark.parametrize(
    ("state", "signals", "end"),
    [
        (NicState.STARTING, [NicSignal.RESYNC, NicSignal.MAPPED], NicState.RESYNCING),
        (NicState.RESYNCING, [NicSignal.RESYNCED], NicState.UP),
        (NicState.UP, [NicSignal.STALLED, NicSignal.UNFENCED], NicState.RESYNCING),
        (NicState.UP, [NicSignal.RESYNC, NicSignal.STALLED, NicSignal.RESYNCED], NicState.FENCED),
        (NicState.STARTING, [NicSignal.RESYNCED, NicSignal.MAPPED], NicState.RESYNCING),
    ],
)
def test_signals_walk_the_table(state: NicState, signals: list[NicSignal], end: NicState) -> None:
    for signal in signals:
        state = next_state(state, signal)
    assert state is end


@pytest.mark.parametrize(
    ("state", "signal"),
    [
        (NicState.STARTING, NicSignal.STALLED),  # only a NIC with a map is fenced
        (NicState.UP, NicSignal.UNFENCED),
        (NicState.UP, NicSignal.MAPPED),  # the first map comes once
        (NicState.FENCED, NicSignal.STALLED),
        (NicState.DOWN, NicSignal.RESYNC),  # others' view of a NIC, never its own
    ],
)
def test_a_missing_pair_is_a_bug(state: NicState, signal: NicSignal) -> None:
    with pytest.raises(InvalidTransition):
        next_state(state, signal)
