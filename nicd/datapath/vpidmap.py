"""The host's VPID -> (NIC, PPID) map as one NIC holds it, versioned by epoch.

Theory of operation: hostd's FPAG is the only writer of the map; it sends the *whole* map with a
strictly increasing epoch whenever a VM is added, removed, migrated or failed over. A NIC applies
a map only if its epoch is newer than the one it holds, so a map delayed or replayed on the bus
can never roll ownership back (it is counted as stale). Fencing follows from that: `owns()`
answers from the newest map only, so a NIC that was paused and resumes after its VPIDs moved
stops processing their frames as soon as it has seen the newer map, and never acts on an older
one. Flow entries speak VPIDs; actions resolve the PPID here at execution time, so a move
changes this map and no flow entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from wire.malformed import Malformed

__all__ = ["MapChange", "MapStats", "PortBinding", "VpidMap"]


@dataclass(frozen=True, slots=True)
class PortBinding:
    """Where a VPID lives: the NIC and that NIC's physical port id (its VF)."""

    nic: str
    ppid: int


@dataclass(frozen=True, slots=True)
class MapChange:
    """What one applied epoch changed: vpid -> (old, new); None means absent on that side."""

    epoch: int
    moved: dict[int, tuple[PortBinding | None, PortBinding | None]]

    def gained(self, nic: str) -> list[int]:
        """VPIDs homed on `nic` now that were not before (to take over, e.g. commit peer cache)."""
        return sorted(
            v
            for v, (old, new) in self.moved.items()
            if new is not None and new.nic == nic and (old is None or old.nic != nic)
        )

    def lost(self, nic: str) -> list[int]:
        """VPIDs homed on `nic` before that no longer are (to stop processing: fencing)."""
        return sorted(
            v
            for v, (old, new) in self.moved.items()
            if old is not None and old.nic == nic and (new is None or new.nic != nic)
        )


@dataclass(slots=True)
class MapStats:
    """Counters of map updates; `vpids_moved` counts every changed VPID, added and removed too."""

    applied: int = 0
    stale_ignored: int = 0
    vpids_moved: int = 0


class MapError(Malformed, ValueError):
    """A map from the host that is not a map: its message names the field (``entries[3].ppid``)."""

    def __init__(self, detail: str) -> None:
        super().__init__("map.entries", detail)

    def __str__(self) -> str:
        return self.detail


def _is_int(x: object) -> bool:
    # bool is an int subclass; True as a VPID is a config or codec bug, not 1.
    return isinstance(x, int) and not isinstance(x, bool)


def _validate(entries: Iterable[tuple[int, str, int]]) -> dict[int, PortBinding]:
    bindings: dict[int, PortBinding] = {}
    ports: dict[PortBinding, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, tuple | list) or len(entry) != 3:
            raise MapError(f"entries[{i}]: must be (vpid, nic, ppid), got {entry!r}")
        vpid, nic, ppid = entry
        if not _is_int(vpid) or vpid < 0:
            raise MapError(f"entries[{i}].vpid: must be an integer >= 0, got {vpid!r}")
        if not isinstance(nic, str) or not nic:
            raise MapError(f"entries[{i}].nic: must be a non-empty string, got {nic!r}")
        if not _is_int(ppid) or ppid < 0:
            raise MapError(f"entries[{i}].ppid: must be an integer >= 0, got {ppid!r}")
        if vpid in bindings:
            raise MapError(f"entries[{i}].vpid: VPID {vpid} appears twice")
        binding = PortBinding(nic, ppid)
        # One VF port carries one VM interface; two VPIDs on it would make egress ambiguous.
        if binding in ports:
            raise MapError(
                f"entries[{i}].ppid: port {ppid} of {nic} already bound to VPID {ports[binding]}"
            )
        ports[binding] = vpid
        bindings[vpid] = binding
    return bindings


class VpidMap:
    """One NIC's copy of the host map; only strictly newer epochs are applied."""

    def __init__(self, self_nic: str) -> None:
        if not isinstance(self_nic, str) or not self_nic:
            raise ValueError(f"self_nic: must be a non-empty string, got {self_nic!r}")
        self.self_nic = self_nic
        self.epoch = 0  # no map seen yet: this NIC owns nothing
        self.stats = MapStats()
        self._map: dict[int, PortBinding] = {}

    def apply(self, epoch: int, entries: Iterable[tuple[int, str, int]]) -> MapChange | None:
        """Replace the map with the full map at `epoch`; a stale epoch is counted, returns None."""
        if not _is_int(epoch) or epoch < 0:
            raise MapError(f"epoch: must be an integer >= 0, got {epoch!r}")
        if epoch <= self.epoch:
            self.stats.stale_ignored += 1
            return None
        new = _validate(entries)
        old = self._map
        moved: dict[int, tuple[PortBinding | None, PortBinding | None]] = {}
        for vpid in sorted(old.keys() | new.keys()):
            before, after = old.get(vpid), new.get(vpid)
            if before != after:
                moved[vpid] = (before, after)
        self._map = new
        self.epoch = epoch
        self.stats.applied += 1
        self.stats.vpids_moved += len(moved)
        return MapChange(epoch, moved)

    def home(self, vpid: int) -> PortBinding | None:
        """The VPID's binding under the newest epoch, or None if it is not in the map."""
        return self._map.get(vpid)

    def owns(self, vpid: int) -> bool:
        """True if this NIC is the VPID's home under the newest epoch (fencing check)."""
        binding = self._map.get(vpid)
        return binding is not None and binding.nic == self.self_nic

    def ppid(self, vpid: int) -> int | None:
        """This NIC's port for a VPID it owns, else None (resolve an action at execution time)."""
        binding = self._map.get(vpid)
        if binding is None or binding.nic != self.self_nic:
            return None
        return binding.ppid

    def local_vpids(self) -> list[int]:
        """VPIDs homed on this NIC, ascending."""
        return self.vpids_of(self.self_nic)

    def vpids_of(self, nic: str) -> list[int]:
        """VPIDs homed on `nic`, ascending."""
        return sorted(v for v, b in self._map.items() if b.nic == nic)

    def entries(self) -> list[tuple[int, str, int]]:
        """The whole map as (vpid, nic, ppid), ascending by VPID (the form `apply` takes)."""
        return [(v, b.nic, b.ppid) for v, b in sorted(self._map.items())]

    def __len__(self) -> int:
        return len(self._map)
