"""NIC liveness decisions of one host: where a lost NIC's VPIDs go, and when they come back.

Only hostd remaps VPIDs, so there is one decider and no split brain. `Supervisor` is sans-I/O:
the daemon tells it a NIC went down or came back (resynchronised), and it answers with the
moves, ``(VPID, new home NIC)``, that the daemon commits as one new map epoch. A lost NIC's
VPIDs are spread over the surviving NICs in name order; with ``failback`` a NIC that returns
gets back the VPIDs the config homes on it.
"""

from __future__ import annotations

from collections.abc import Callable


class Supervisor:
    """Failover and failback planning over the NICs of one host."""

    def __init__(
        self,
        nics: list[str],
        configured: dict[int, str],
        where: Callable[[int], str],
        *,
        failback: bool = True,
    ) -> None:
        """`configured`: each VPID's home in the config; `where`: its home in the map now."""
        self.nics = list(nics)
        self.configured = dict(configured)
        self.where = where
        self.failback = failback
        self.down: set[str] = set()

    def nic_down(self, nic: str) -> list[tuple[int, str]]:
        """`nic` is lost: its VPIDs go to the survivors (none left: they stay, unreachable)."""
        if nic in self.down or nic not in self.nics:
            return []
        self.down.add(nic)
        survivors = [n for n in sorted(self.nics) if n not in self.down]
        if not survivors:
            return []
        lost = sorted(v for v in self.configured if self.where(v) == nic)
        return [(vpid, survivors[i % len(survivors)]) for i, vpid in enumerate(lost)]

    def nic_up(self, nic: str) -> list[tuple[int, str]]:
        """`nic` is back and resynchronised: with failback, its configured VPIDs return."""
        if nic not in self.down:
            return []
        self.down.discard(nic)
        # VPIDs stranded while every NIC was down come back to whoever returns first.
        stranded = [v for v in self.configured if self.where(v) in self.down]
        mine = [v for v, home in self.configured.items() if home == nic and self.where(v) != nic]
        moves = set(stranded) | (set(mine) if self.failback else set())
        return [(vpid, nic) for vpid in sorted(moves)]
