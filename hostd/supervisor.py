"""NIC liveness decisions of one host: where a lost NIC's VPIDs go, and when they come back.

Only hostd remaps VPIDs, so there is one decider and no split brain. `Supervisor` is sans-I/O:
the daemon tells it a NIC went down, that a NIC answered a probe, or that a NIC came back
(resynchronised), and polls it with `now`; it answers with probes to send and with moves,
``(VPID, new home NIC)``, that the daemon commits as one new map epoch.

Theory of operation. A failover is a *confirmation round* before it is a move. NICs often fail
together (a shared power feed, a host-wide fault, two `kill -9` in one command), and a NIC that
died a millisecond after another still looks alive from its last heartbeat. So when a NIC is
declared down, the supervisor does not pick survivors from what it last heard: it sends every
remaining NIC a `Probe` and moves VPIDs only to NICs that answer it, that is, that were running
*after* the loss was detected. A NIC declared down during the round restarts it (fresh proof
is asked of the others), and all the VPIDs lost in one round move in one epoch, each exactly
once, to NICs that answered. The round ends when every candidate has answered or been declared
down, or at its deadline (one heartbeat interval: a hung NIC never answers, and is left out).
An answer counts whenever it comes, to any probe sent since the loss: a slow NIC (a loaded
machine, a loop busy with a snapshot) is slow, not dead. If nobody answered by the deadline,
the probe goes out again: the VPIDs wait rather than go to a NIC nobody has heard from. With
``failback``, a NIC that returns gets back the VPIDs the config (or an operator's migrate) homes
on it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final


class Phase(enum.Enum):
    """Where the supervisor is in a failover."""

    STEADY = "steady"  # nothing lost waits for a move
    CONFIRMING = "confirming"  # a NIC was lost: probes are out, answers are awaited


class Event(enum.Enum):
    """What moves the supervisor's phase."""

    LOST = "lost"  # a NIC was declared down
    SETTLED = "settled"  # every candidate answered or is down: decide now
    EXPIRED = "expired"  # the round's deadline passed
    NOBODY = "nobody"  # ... and no candidate had answered: probe again


# Every (phase, event) pair that can happen; a missing one is a bug, not a silent no-op.
TRANSITIONS: Final[dict[tuple[Phase, Event], Phase]] = {
    (Phase.STEADY, Event.LOST): Phase.CONFIRMING,
    (Phase.CONFIRMING, Event.LOST): Phase.CONFIRMING,  # a new round: fresh proof of life
    (Phase.CONFIRMING, Event.SETTLED): Phase.STEADY,
    (Phase.CONFIRMING, Event.EXPIRED): Phase.STEADY,
    (Phase.CONFIRMING, Event.NOBODY): Phase.CONFIRMING,
}


@dataclass(slots=True)
class Step:
    """What the daemon must do now: send `probe` to `targets` (0: none), commit `moves`."""

    probe: int = 0
    targets: list[str] = field(default_factory=list)
    moves: list[tuple[int, str]] | None = None  # None: no decision this poll


class Supervisor:
    """Failover and failback planning over the NICs of one host."""

    def __init__(
        self,
        nics: list[str],
        configured: dict[int, str],
        where: Callable[[int], str],
        *,
        failback: bool = True,
        confirm_s: float = 0.05,
        first_probe: int = 1,
    ) -> None:
        """`configured`: each VPID's home in the config; `where`: its home in the map now;
        `confirm_s`: how long a confirmation round waits for the candidates' answers;
        `first_probe`: the number of our first probe (NICs echo the highest they saw, so a
        restarted daemon numbers above its earlier boot's)."""
        self.nics = list(nics)
        self.configured = dict(configured)
        self.where = where
        self.failback = failback
        self.confirm_s = confirm_s
        self.down: set[str] = set()
        self.phase = Phase.STEADY
        self.probe_seq = first_probe - 1
        self._answered: dict[str, int] = {}  # the newest probe each NIC answered
        self._deadline = 0.0
        self._bar = 0  # the first probe of the round: answers to it or later ones count
        self._to_send: Step | None = None

    # ------------------------------------------------------------------ inputs

    def nic_down(self, nic: str, now: float) -> None:
        """`nic` is lost: start (or restart) a confirmation round among the others."""
        if nic in self.down or nic not in self.nics:
            return
        self.down.add(nic)
        self._fire(Event.LOST)
        self._new_round(now)

    def answered(self, nic: str, probe: int) -> None:
        """`nic` answered probe `probe` (its heartbeat echoes the newest one it saw)."""
        if probe > self._answered.get(nic, 0):
            self._answered[nic] = probe

    def silent_since(self, probe: int) -> list[str]:
        """The NICs that have answered no probe numbered `probe` or later."""
        return [n for n in self.nics if self._answered.get(n, 0) < probe]

    def next_probe(self) -> int:
        """A probe number for the daemon's own asking (a restarted host recovering its map)."""
        self.probe_seq += 1
        return self.probe_seq

    def nic_up(self, nic: str) -> list[tuple[int, str]]:
        """`nic` is back and resynchronised: with failback, its configured VPIDs return."""
        if nic not in self.down:
            return []
        self.down.discard(nic)
        # It just spoke, so it is proof of life for a round under way too.
        self._answered[nic] = self.probe_seq
        if self.phase is Phase.CONFIRMING and not self.lost():
            self._fire(Event.SETTLED)  # what was lost is back: nothing left to decide
        mine = [v for v, home in self.configured.items() if home == nic and self.where(v) != nic]
        mine = mine if self.failback else []
        if self.phase is Phase.CONFIRMING:
            # The round's decision moves what lost NICs held (to it among others).
            mine = [v for v in mine if self.where(v) not in self.down]
            return [(vpid, nic) for vpid in sorted(mine)]
        # VPIDs stranded while every NIC was down come back to whoever returns first.
        moves = set(self.lost()) | set(mine)
        return [(vpid, nic) for vpid in sorted(moves)]

    # ------------------------------------------------------------------ decisions

    def poll(self, now: float) -> Step:
        """Probes to send and, once a round is over, the moves to commit as one epoch."""
        step = self._to_send or Step()
        self._to_send = None
        if self.phase is not Phase.CONFIRMING:
            return step
        candidates = self.candidates()
        alive = [n for n in candidates if self._answered.get(n, 0) >= self._bar]
        if len(alive) == len(candidates):
            self._fire(Event.SETTLED)
        elif now >= self._deadline and alive:
            self._fire(Event.EXPIRED)
        elif now >= self._deadline:
            self._fire(Event.NOBODY)
            self._new_round(now, raise_bar=False)
            return self._merge(step)
        else:
            return step
        step.moves = self._plan(alive)
        return step

    def candidates(self) -> list[str]:
        """The NICs not declared down, in name order."""
        return [n for n in sorted(self.nics) if n not in self.down]

    def lost(self) -> list[int]:
        """VPIDs whose home in the map is a NIC declared down."""
        return sorted(v for v in self.configured if self.where(v) in self.down)

    # ------------------------------------------------------------------ internals

    def _plan(self, alive: list[str]) -> list[tuple[int, str]]:
        if not alive:
            return []  # every NIC is down: the VPIDs stay, unreachable, until one returns
        return [(vpid, alive[i % len(alive)]) for i, vpid in enumerate(self.lost())]

    def _new_round(self, now: float, raise_bar: bool = True) -> None:
        self._deadline = now + self.confirm_s
        seq = self.next_probe()
        if raise_bar:
            self._bar = seq  # a loss: proof of life from after it
        self._to_send = Step(seq, self.candidates())

    def _merge(self, step: Step) -> Step:
        fresh, self._to_send = self._to_send, None
        assert fresh is not None
        return Step(fresh.probe, fresh.targets, step.moves)

    def _fire(self, event: Event) -> None:
        self.phase = TRANSITIONS[self.phase, event]
