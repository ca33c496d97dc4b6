"""The flow processing and action generator (FPAG): VPIDs for VM interfaces and the VPID map.

Every VM interface gets a locally unique virtual port id (VPID), never reused while in use.
Each NIC's VF ports get physical port ids (PPIDs) from `FIRST_VF_PPID` up (uplinks hold the
small numbers). The map `VPID -> (NIC, PPID)` is versioned by an epoch that only grows; a move
(operator migrate or failover) is a new epoch in which the VPID has a new NIC and PPID, so no
flow entry that speaks VPIDs ever needs rewriting.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_VF_PPID = 100


@dataclass(slots=True)
class Binding:
    """Where one VM interface is plugged: its VPID, owner, and its VF port on a NIC."""

    vpid: int
    vm: str
    index: int
    nic: str
    ppid: int


class Fpag:
    """VPID allocation and the host's VPID map with epochs."""

    def __init__(self, nics: list[str]) -> None:
        self.nics = list(nics)
        self.epoch = 0
        self._bindings: dict[int, Binding] = {}
        self._by_port: dict[tuple[str, int], int] = {}
        self._next_vpid = 1
        self._dirty = False

    def attach(self, vm: str, index: int, nic: str) -> int:
        """Give interface `index` of `vm` a new VPID and a VF port on `nic`."""
        self._check_nic(nic)
        vpid = self._next_vpid
        self._next_vpid += 1
        self._bind(Binding(vpid, vm, index, nic, self._free_ppid(nic)))
        return vpid

    def move(self, vpid: int, nic: str) -> Binding:
        """Plug VPID `vpid` into a new VF port on `nic` (effective at the next `commit`)."""
        self._check_nic(nic)
        old = self._bindings[vpid]
        if old.nic == nic:
            return old
        del self._by_port[(old.nic, old.ppid)]
        new = Binding(vpid, old.vm, old.index, nic, self._free_ppid(nic))
        self._bind(new)
        return new

    def commit(self) -> int:
        """Close the current changes into a new epoch and return it (unchanged if none)."""
        if self._dirty:
            self.epoch += 1
            self._dirty = False
        return self.epoch

    def restore(self, epoch: int, entries: list[tuple[int, str, int]]) -> list[int]:
        """Take over a map a NIC holds (a restarted host recovers the one in force) at `epoch`.

        Only VPIDs this host allocated are bound (its VMs are the config's, in the same order);
        returns the VPIDs of `entries` it does not know. The epoch never goes backwards.
        """
        unknown = []
        for vpid, nic, ppid in entries:
            old = self._bindings.get(vpid)
            if old is None or nic not in self.nics:
                unknown.append(vpid)
                continue
            self._bindings[vpid] = Binding(vpid, old.vm, old.index, nic, ppid)
        self._by_port = {(b.nic, b.ppid): b.vpid for b in self._bindings.values()}
        self.epoch = max(self.epoch, epoch)
        self._dirty = False
        return unknown

    def check_map(self, entries: list[tuple[int, str, int]]) -> str | None:
        """Why a map a NIC holds cannot be this host's (None if it can): every VPID we allocated
        exactly once, on a NIC of ours, no VF port twice."""
        vpids = [vpid for vpid, _, _ in entries]
        if sorted(vpids) != sorted(self._bindings):
            return f"VPIDs {sorted(vpids)} are not this host's {sorted(self._bindings)}"
        if any(nic not in self.nics for _, nic, _ in entries):
            return "a NIC that is not this host's"
        if len({(nic, ppid) for _, nic, ppid in entries}) != len(entries):
            return "a VF port given twice"
        return None

    def raise_epoch(self, floor: int) -> int:
        """Move the epoch up to at least `floor` (the map unchanged); returns the epoch."""
        self.epoch = max(self.epoch, floor)
        return self.epoch

    def entries(self) -> list[tuple[int, str, int]]:
        """The whole map as (VPID, NIC, PPID) rows, for `MapUpdate`."""
        return [(b.vpid, b.nic, b.ppid) for b in sorted(self._bindings.values(), key=_vpid)]

    def binding(self, vpid: int) -> Binding:
        """The binding of a VPID; KeyError if unknown."""
        return self._bindings[vpid]

    def vpid_at(self, nic: str, ppid: int) -> int | None:
        """The VPID plugged into VF port `ppid` of `nic`, if any."""
        return self._by_port.get((nic, ppid))

    def vpids_on(self, nic: str) -> list[int]:
        """VPIDs homed on `nic`."""
        return sorted(b.vpid for b in self._bindings.values() if b.nic == nic)

    def _bind(self, b: Binding) -> None:
        self._bindings[b.vpid] = b
        self._by_port[(b.nic, b.ppid)] = b.vpid
        self._dirty = True

    def _free_ppid(self, nic: str) -> int:
        ppid = FIRST_VF_PPID
        while (nic, ppid) in self._by_port:
            ppid += 1
        return ppid

    def _check_nic(self, nic: str) -> None:
        if nic not in self.nics:
            raise ValueError(f"no NIC named {nic!r} on this host")


def _vpid(b: Binding) -> int:
    return b.vpid
