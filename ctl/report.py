"""`nicteam report RUNDIR/logs`: what each fault did, rebuilt from every process's JSON log.

A fault is a `chaos.*` event the CLI logged (kill, pause, partition, link-down). Its window runs
until the next fault (or the end of the logs). In it the report finds, by their stable event
names: detection (`host.nic.down`; for a partition the siblings' `nic.peer.down`; for a cable
`team.uplink.down`), the host's decision (`host.failover`) and its epoch, the commit
(`ct.commit`), the first frame on the new path (`team.first_frame` of that epoch), the resync
(`sync.resync.done`), the rejoin (`nic.rejoin`) and the failback (`host.failback`).

Frames lost and connections reset come from the endpoints' own books, which hostd
(`host.flows`) and fabricd (`fabric.flows`, the external peers) log every `stats_s`: the
difference between the last books before the fault and the last ones in its window.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ctl.logs import Event, load, select
from ctl.summary import losses, merge_books

FAULTS = {
    "chaos.kill": "kill",
    "chaos.pause": "pause",
    "chaos.partition": "partition",
    "chaos.link_down": "link-down",
}
STEPS = {
    "host.nic.down", "nic.peer.down", "team.uplink.down", "host.failover", "ct.commit",
    "team.first_frame", "sync.resync.start", "sync.resync.done", "nic.rejoin", "host.failback",
    "nic.fenced", "nic.unfenced", "host.flows", "fabric.flows", "chaos.resume",
}  # fmt: skip

Losses = dict[str, tuple[int, int]]  # flow -> (frames lost, resets), cumulative


@dataclass(slots=True)
class Fault:
    """One injected fault and what followed it."""

    kind: str
    nic: str
    at: str
    detect_ms: float | None = None
    takeover_ms: float | None = None
    resync_ms: float | None = None
    frames_lost: int = 0
    connections_reset: int = 0
    lost_per_flow: dict[str, int] = field(default_factory=dict)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)  # ms after, event, detail

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["timeline"] = [{"ms": ms, "event": e, "detail": d} for ms, e, d in self.timeline]
        return out


def report(logs: Path) -> dict[str, Any]:
    """Every fault in the logs, in order, with its timeline, losses and resets."""
    events = load(logs, set(FAULTS) | STEPS)
    faults = [e for e in events if e["event"] in FAULTS]
    out = []
    for i, f in enumerate(faults):
        end = faults[i + 1]["t"] if i + 1 < len(faults) else float("inf")
        out.append(_fault(f, [e for e in events if f["t"] <= e["t"] < end], events))
    return {"faults": [f.as_dict() for f in out]}


def _fault(f: Event, window: list[Event], events: list[Event]) -> Fault:
    kind = FAULTS[f["event"]]
    t0 = f["t"]
    nic = f.get("nic") or ",".join(f.get("nics", [])) or str(f.get("port", ""))
    at = datetime.fromtimestamp(t0, UTC).isoformat(timespec="milliseconds")
    fault = Fault(kind, nic, at)

    def ms(e: Event) -> float:
        return round((e["t"] - t0) * 1000, 1)

    def note(e: Event, detail: str) -> None:
        fault.timeline.append((ms(e), e["event"], detail))

    note(f, f"{kind} {nic}")
    nics = f.get("nics") or [f.get("nic")]
    detected = _detection(kind, window, nics, str(f.get("port", "")))
    if detected is not None:
        fault.detect_ms = ms(detected)
        note(detected, str(detected.get("nic") or detected.get("peer") or ""))
    for e in select(window, "host.failover", t0, nic=f.get("nic")):
        note(e, f"epoch {e['epoch']}: " + " ".join(f"{v}->{n}" for v, n in e["moves"]))
        commits = [c for c in select(window, "ct.commit", t0) if c.get("epoch") == e["epoch"]]
        for c in commits:
            note(c, f"{c['nic']} commits {c['records']} records of {c['origin']}")
        firsts = [x for x in select(window, "team.first_frame", t0) if x.get("epoch") == e["epoch"]]
        if firsts:
            fault.takeover_ms = ms(firsts[0])
            note(firsts[0], f"{firsts[0]['nic']} vpid {firsts[0]['vpid']} {firsts[0]['way']}")
    for name in ("chaos.resume", "nic.fenced", "nic.unfenced", "sync.resync.start"):
        for e in select(window, name, t0):
            if e.get("nic") in nics:
                note(e, str(e.get("nic")))
    for e in select(window, "sync.resync.done", t0):
        if e.get("nic") in nics:
            fault.resync_ms = e.get("ms")
            note(e, f"{e['nic']}: {e.get('records')} records in {e.get('ms')} ms")
    for name in ("nic.rejoin", "host.failback"):
        for e in select(window, name, t0):
            if e.get("nic") in nics:
                note(e, str(e.get("nic")))
    before, after = _books(events, t0), _books(window, float("inf"))
    for flow, (lost, resets) in after.items():
        lost0, resets0 = before.get(flow, (0, 0))
        if lost - lost0:
            fault.lost_per_flow[flow] = lost - lost0
        fault.frames_lost += lost - lost0
        fault.connections_reset += resets - resets0
    fault.timeline.sort()
    return fault


def _detection(kind: str, window: list[Event], nics: list[Any], port: str) -> Event | None:
    if kind in ("kill", "pause"):
        found = [e for e in window if e["event"] == "host.nic.down" and e.get("nic") in nics]
    elif kind == "partition":
        found = [e for e in window if e["event"] == "nic.peer.down" and e.get("nic") in nics]
    else:
        found = [e for e in window if e["event"] == "team.uplink.down" and e.get("uplink") == port]
    return found[0] if found else None


def _books(events: list[Event], before: float) -> Losses:
    """Cumulative (frames lost, resets) per flow from the last books logged before `before`."""
    last: dict[tuple[str, str], Event] = {}
    for e in events:
        if e["event"] in ("host.flows", "fabric.flows") and e["t"] < before:
            last[(e["event"], str(e.get("proc")))] = e
    hosts = [e["flows"] for (name, _), e in last.items() if name == "host.flows"]
    peers = {f"{proc}/{peer}": books for (name, proc), e in last.items()
             if name == "fabric.flows" for peer, books in e["peers"].items()}  # fmt: skip
    return losses(merge_books(hosts, peers))


def format_report(rep: dict[str, Any]) -> str:
    """Each fault: a header with the figures, then its timeline."""
    lines = []
    for f in rep["faults"]:
        figures = [
            f"detect {f['detect_ms']} ms" if f["detect_ms"] is not None else "not detected",
            f"takeover {f['takeover_ms']} ms" if f["takeover_ms"] is not None else None,
            f"resync {f['resync_ms']} ms" if f["resync_ms"] is not None else None,
            f"{f['frames_lost']} frames lost",
            f"{f['connections_reset']} connections reset",
        ]
        lines.append(f"{f['at']}  {f['kind']} {f['nic']}: " + ", ".join(x for x in figures if x))
        for step in f["timeline"]:
            lines.append(f"  {step['ms']:>9.1f} ms  {step['event']:<18} {step['detail']}")
        if f["lost_per_flow"]:
            lost = ", ".join(f"{k} {v}" for k, v in sorted(f["lost_per_flow"].items()))
            lines.append(f"  lost per flow: {lost}")
    return "\n".join(lines) if lines else "no faults in these logs (chaos.* events)"
