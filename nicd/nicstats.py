"""What a NIC measures of itself: its stats reply, its VPIDs' load, first-frame timing. Sans-I/O.

`nic_stats` assembles the `stats` control reply (and the periodic `nic.stats` event) from the
control plane, the pipeline and the bus counters; `vpid_load` is the load its heartbeats carry
for load-based teaming; `FirstFrames` logs how long after a takeover each VPID's first frame
passed on its new path (`team.first_frame`), every time from the `now` it is handed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bus.nicstate import NicState
from nicd.datapath.pipeline import Emit, Pipeline, PortKind

if TYPE_CHECKING:
    from bus.node import BusStats
    from nicd.control import NicControl

# What the periodic `nic.stats` event carries of the stats reply: the drops per reason and the
# conntrack counters too, so a run's logs say why a flow stalled (`ct.invalid` growing: a record
# in a state that refuses the flow's segments), not only that it did.
LOGGED = ("frames_in", "slow_path", "drops", "ct", "tiers")


def vpid_load(p: Pipeline | None) -> list[int]:
    """Flat (team uplink index, VPID, bytes/s) triples of the last interval, for a heartbeat."""
    if p is None:
        return []
    index = {u.name: i for i, u in enumerate(p.team.uplinks)}
    return [
        x for name, vpid, rate in p.team.published_load() for x in (index[name], vpid, round(rate))
    ]


def nic_stats(c: NicControl, now: float, bus: BusStats) -> dict[str, Any]:
    """Counters for the control socket and the periodic `nic.stats` event."""
    out: dict[str, Any] = {
        "nic": c.name,
        "not_ready_drops": c.not_ready_drops,
        "fenced": c.fenced,
        "fenced_drops": c.fenced_drops,
        "channels": c.channels.states(now),
    }
    out["bus"] = {
        "sent": bus.sent,
        "received": bus.received,
        "dropped_full": bus.dropped_full,
        "dropped_unknown_peer": bus.dropped_unknown_peer,
        "identity_refused": bus.identity_refused,
        "auth_denied": dict(bus.auth_denied),
        "malformed": dict(bus.malformed),
    }
    p = c.pipeline
    if p is None:
        return out | {
            "state": NicState.WAITING_FOR_POLICY.value,
            "frames_in": 0,
            "slow_path": 0,
            "tiers": {},
        }
    return out | {"state": c.state.value} | pipeline_stats(p, c.sync.stats())


def pipeline_stats(p: Pipeline, sync: dict[str, Any]) -> dict[str, Any]:
    """The datapath's part of the stats reply (and `sync`, the replicator's, in its place)."""
    ct = p.ct.stats
    return {
        "epoch": p.map.epoch,
        "vpids": p.map.local_vpids(),
        "frames_in": p.stats.frames_in,
        "forwarded": p.stats.forwarded,
        "slow_path": p.stats.slow_path,
        "drops": dict(p.stats.drops),
        "conntrack": len(p.ct),
        "ct": {"created": ct.created, "expired": ct.expired, "invalid": ct.invalid},
        "tiers": {
            "eswitch": p.eswitch.stats.as_dict() | {"entries": len(p.eswitch)},
            "cache": p.cache.stats.as_dict() | {"entries": len(p.cache)},
        },
        "handover_sent": dict(p.stats.handover_sent),
        "handover_received": dict(p.stats.handover_received),
        "team": [u.name for u in p.team.live()],
        "team_policy": p.team.policy.value,
        # The uplink each local VPID leaves by (under l4-hash: the one its MAC announces).
        "assignments": {
            str(v): name for v, name in p.team.assignments(p.map.local_vpids()).items()
        },
        "links_down": p.team.links_down(),
        "team_moves": p.stats.team_moves,
        "sync": sync,
        "learned_macs": len(p.vswitch.learned()),
        "announcements": p.stats.announcements,
    }


class FirstFrames:
    """VPIDs taken over and not yet seen on their new path; logs each one's first frame."""

    def __init__(self, log: Any) -> None:
        self.log = log
        # (VPID, epoch, taken at) per VF PPID, and the VF PPID of each one's MAC (frames it
        # sends to the network).
        self.pending: dict[int, tuple[int, int, float]] = {}
        self._macs: dict[bytes, int] = {}

    def expect(self, p: Pipeline, gained: set[int], epoch: int, now: float) -> None:
        """VPIDs `gained` at `epoch` were taken over at `now`."""
        for vpid in gained:
            ppid = p.map.ppid(vpid)
            iface = p.vswitch.interface(vpid)
            if ppid is not None and iface is not None:
                self.pending[ppid] = (vpid, epoch, now)
                self._macs[iface.mac] = ppid

    def seen(self, emits: list[Emit], now: float) -> None:
        """Log the first frame each pending VPID gets or sends among `emits` (a short window
        after a takeover, so the scan costs nothing in steady state)."""
        for e in emits:
            if e.out is PortKind.VF:
                ppid = e.target
            elif e.out is PortKind.UPLINK and (mac := e.frame[6:12]) in self._macs:
                ppid = self._macs[mac]
            else:
                continue
            pending = self.pending.pop(ppid, None)
            if pending is not None:
                vpid, epoch, taken = pending
                way = "to_vm" if e.out is PortKind.VF else "to_network"
                self.log.info("team.first_frame", vpid=vpid, epoch=epoch, way=way,
                              after_ms=round((now - taken) * 1000, 3))  # fmt: skip
                if not self.pending:
                    self._macs.clear()
                    return
