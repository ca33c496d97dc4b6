"""Sans-I/O peer liveness from heartbeats and transport disconnects; time is always an argument.

Theory of operation: each tracked peer is in one ``Liveness`` state. Four signals move it, through
the one table ``TRANSITIONS``: ``HEARD`` (a heartbeat or any message arrived), ``LATE`` (at least
one ``interval`` passed since we last heard it), ``SILENT`` (``misses`` intervals passed) and
``DISCONNECTED`` (the transport saw the connection drop: a crash, so DOWN at once without waiting
for the misses). ``heard`` and ``disconnected`` apply their signal immediately; ``poll(now)``
applies the time-based ones and returns every transition since the previous poll, in order, so
a driver acts in one place. A DOWN peer that is heard again is UP: it restarted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final


class Liveness(enum.Enum):
    """What we believe about a peer."""

    UP = "up"
    SUSPECT = "suspect"  # missed a heartbeat: informational, nothing fails over yet
    DOWN = "down"  # missed ``misses`` heartbeats, or the transport reported a disconnect


class Signal(enum.Enum):
    """What can happen to a peer."""

    HEARD = "heard"
    LATE = "late"
    SILENT = "silent"
    DISCONNECTED = "disconnected"


_UP, _SUSPECT, _DOWN = Liveness.UP, Liveness.SUSPECT, Liveness.DOWN

# Every (state, signal) pair is listed: a missing one is a bug, not a silent no-op.
TRANSITIONS: Final[dict[tuple[Liveness, Signal], Liveness]] = {
    (_UP, Signal.HEARD): _UP,
    (_UP, Signal.LATE): _SUSPECT,
    (_UP, Signal.SILENT): _DOWN,  # a poll can come later than one interval
    (_UP, Signal.DISCONNECTED): _DOWN,
    (_SUSPECT, Signal.HEARD): _UP,
    (_SUSPECT, Signal.LATE): _SUSPECT,
    (_SUSPECT, Signal.SILENT): _DOWN,
    (_SUSPECT, Signal.DISCONNECTED): _DOWN,
    (_DOWN, Signal.HEARD): _UP,
    (_DOWN, Signal.LATE): _DOWN,  # lateness never revives a peer
    (_DOWN, Signal.SILENT): _DOWN,
    (_DOWN, Signal.DISCONNECTED): _DOWN,
}

Transition = tuple[str, Liveness, Liveness]


@dataclass(slots=True)
class _Peer:
    state: Liveness
    last_heard: float


class LivenessTracker:
    """Liveness of named peers from heartbeat arrival times; unknown peers are DOWN."""

    def __init__(self, interval: float, misses: int) -> None:
        if interval <= 0 or misses < 1:
            raise ValueError("interval must be > 0 and misses >= 1")
        self.interval = interval
        self.misses = misses
        self._peers: dict[str, _Peer] = {}
        self._pending: list[Transition] = []

    def heard(self, peer: str, now: float) -> None:
        """Record a heartbeat (or any sign of life) from ``peer`` at ``now``."""
        state = self._peers.get(peer)
        if state is None:
            self._peers[peer] = _Peer(_UP, now)
            self._pending.append((peer, _DOWN, _UP))  # from the DOWN every unknown peer has
            return
        state.last_heard = max(state.last_heard, now)
        self._signal(peer, state, Signal.HEARD)

    def disconnected(self, peer: str, now: float) -> None:
        """The transport reported ``peer`` disconnected: DOWN at once (call ``poll`` to act)."""
        state = self._peers.get(peer)
        if state is not None:
            self._signal(peer, state, Signal.DISCONNECTED)

    def poll(self, now: float) -> list[Transition]:
        """Apply the time-based signals at ``now``; return transitions since the last poll."""
        late_after = self.interval
        silent_after = self.interval * self.misses
        for peer, state in self._peers.items():
            silence = now - state.last_heard
            if silence >= silent_after:
                self._signal(peer, state, Signal.SILENT)
            elif silence >= late_after:
                self._signal(peer, state, Signal.LATE)
        out, self._pending = self._pending, []
        return out

    def excuse(self, now: float) -> None:
        """We stood still (paused, a stalled loop): the silence says nothing of our peers, so
        every peer not already DOWN counts as heard at `now` (without a transition)."""
        for state in self._peers.values():
            if state.state is not _DOWN:
                state.last_heard = max(state.last_heard, now)

    def shift(self, seconds: float, now: float) -> None:
        """We stood still for `seconds`: that time is nobody's silence, so every peer not
        already DOWN is judged as if it had not passed (never heard later than `now`)."""
        for state in self._peers.values():
            if state.state is not _DOWN:
                state.last_heard = min(now, state.last_heard + seconds)

    def state(self, peer: str) -> Liveness:
        """Current belief about ``peer`` (DOWN if never heard)."""
        state = self._peers.get(peer)
        return state.state if state is not None else _DOWN

    def peers(self) -> dict[str, Liveness]:
        """Every tracked peer and its state."""
        return {peer: state.state for peer, state in self._peers.items()}

    def forget(self, peer: str) -> None:
        """Stop tracking ``peer`` (e.g. removed from the config); no transition is reported."""
        self._peers.pop(peer, None)

    def _signal(self, peer: str, state: _Peer, signal: Signal) -> None:
        new = TRANSITIONS[state.state, signal]
        if new is not state.state:
            self._pending.append((peer, state.state, new))
            state.state = new
