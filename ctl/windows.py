"""Fault windows: each `chaos.*` fault from its injection to its recovery, and its detection.

What ends a window, per kind (`nicteam report` explains how losses are charged to them):

- kill: the NIC's `nic.rejoin` after it, extended to the `host.failback` of that NIC that
  follows (before its next rejoin); lacking a rejoin, its `host.failback`.
- pause: its `chaos.resume`; if the NIC was declared down (`host.nic.down`) or fenced itself
  (`nic.fenced`) before resume + detection time, its recovery as for a kill (else its
  `nic.unfenced`) after the resume.
- partition: injection + `seconds` (it heals itself; a `chaos.unpartition` of the pair heals it
  sooner), extended to the siblings' `nic.peer.up` (each direction that went down; before the
  next fault on either NIC).
- link-down: the `chaos.link_up` of that port.
- migrate: the target's `team.takeover` of the host's `host.migrate` epoch (a migrate the host
  refused is no fault at all).
- hostd-pause: its `chaos.hostd_resume`; hostd-kill: the restarted daemon's `host.recovered`.
- machine-cut (a machine's network cut, logged by whoever cut it with the machine's `nics`): its
  `chaos.machine_heal`, extended to fabricd's `fabric.nic.up` of each of its NICs that fabricd
  saw go down (`fabric.nic.down`: the bus's tcp heartbeats timed out).

Detection: `host.nic.down` (kill, pause), the siblings' `nic.peer.down` of each other
(partition), `team.uplink.down` (cable), `host.migrate` (a planned move), the daemon's own
`host.stalled` (its pause), its card's `host.worker.exit` (its kill), fabricd's
`fabric.nic.down` of one of the machine's NICs (machine-cut).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from configs import Timers
from ctl.logs import Event, select

FAULTS = {
    "chaos.kill": "kill",
    "chaos.pause": "pause",
    "chaos.partition": "partition",
    "chaos.link_down": "link-down",
    "chaos.migrate": "migrate",
    "chaos.hostd_pause": "hostd-pause",
    "chaos.hostd_kill": "hostd-kill",
    "chaos.machine_cut": "machine-cut",
}
HOST_FAULTS = ("hostd-pause", "hostd-kill")
EVENT_OF = {kind: name for name, kind in FAULTS.items()}
NIC_FAULTS = ("kill", "pause")
BOOKED_LATE_S = 0.5  # a loss is booked when the flow's next message arrives: a little later
INF = float("inf")


@dataclass(frozen=True, slots=True)
class Window:
    """One fault from its injection to its recovery (`healed` False: to the end of the logs)."""

    id: int  # 1, 2, ... in order of injection
    kind: str
    what: str  # "nic1", "nic1,nic2", "nic1/p0"
    targets: frozenset[str]  # the NICs, or the port
    start: float
    end: float
    healed: bool
    heal: float | None = None  # when the fault itself stopped (resume, partition over, cable)

    def overlap(self, a: float, b: float) -> float:
        """Seconds the interval (a, b] shares with this window as charged (to end + late)."""
        return max(0.0, min(b, self.end + BOOKED_LATE_S) - max(a, self.start))

    def touches(self, a: float, b: float) -> bool:
        """The interval (a, b] (or the instant a, when a == b) meets this window as charged."""
        return self.start <= a <= self.end + BOOKED_LATE_S if a == b else self.overlap(a, b) > 0


def windows(events: list[Event], timers: Timers, last: float) -> list[Window]:
    """Each `chaos.*` fault's window, in order of injection; `last`: the end of the logs."""
    out = []
    faults = [e for e in events if e["event"] in FAULTS and _happened(e, events)]
    for i, f in enumerate(faults, 1):
        kind = FAULTS[f["event"]]
        end, heal = _ENDS[kind](f, events, timers)
        nics = [f.get("host")] if kind in HOST_FAULTS else f.get("nics") or [f.get("nic")]
        targets = frozenset(str(x) for x in nics if x) or frozenset({str(f.get("port", ""))})
        healed = end is not None
        out.append(
            Window(i, kind, _what(f), targets, f["t"], last if end is None else end, healed, heal)
        )
    return out


def _happened(f: Event, events: list[Event]) -> bool:
    """A migrate the host refused (its target was not up) changed nothing: no fault."""
    return f["event"] != "chaos.migrate" or _decision(f, events) is not None


def _decision(f: Event, events: list[Event]) -> Event | None:
    """The host's `host.migrate` that carried out the migrate `f` (within 5 s)."""
    found = _first(events, "host.migrate", f["t"], nic=f.get("nic"))
    return found if found is not None and found["t"] <= f["t"] + 5.0 else None


def _what(f: Event) -> str:
    if f["event"] in ("chaos.hostd_pause", "chaos.hostd_kill"):
        return str(f.get("host", ""))
    if f["event"] == "chaos.migrate":
        return f"{f.get('vm')}->{f.get('nic')}"
    if f["event"] == "chaos.machine_cut":
        return f"{f.get('machine')} ({','.join(f.get('nics', []))})"
    return f.get("nic") or ",".join(f.get("nics", [])) or str(f.get("port", ""))


def _first(events: list[Event], name: str, after: float, **fields: Any) -> Event | None:
    found = select(events, name, after, **fields)
    return found[0] if found else None


def _recovered(nic: str, after: float, events: list[Event]) -> float | None:
    """When `nic` was back after `after`: rejoin (then its failback), failback, or unfence."""
    rejoins = select(events, "nic.rejoin", after, nic=nic)
    since = rejoins[0]["t"] if rejoins else after
    until = rejoins[1]["t"] if len(rejoins) > 1 else INF
    backs = [e for e in select(events, "host.failback", since, nic=nic) if e["t"] < until]
    if backs:
        return float(backs[0]["t"])
    if rejoins:
        return float(rejoins[0]["t"])
    unfenced = _first(events, "nic.unfenced", after, nic=nic)
    return unfenced["t"] if unfenced else None


def _end_kill(f: Event, events: list[Event], timers: Timers) -> tuple[float | None, None]:
    return _recovered(f.get("nic", ""), f["t"], events), None


def _end_pause(f: Event, events: list[Event], timers: Timers) -> tuple[float | None, float | None]:
    nic = f.get("nic", "")
    resume = _first(events, "chaos.resume", f["t"], nic=nic)
    if resume is None:
        return None, None
    heal = resume["t"]
    troubled = _went_down(nic, f["t"], heal + timers.down_after_s, events)
    return (_recovered(nic, heal, events) if troubled else heal), heal


def _went_down(nic: str, t0: float, t1: float, events: list[Event]) -> bool:
    """In [t0, t1] the host declared `nic` down, or `nic` fenced itself."""
    down = ("host.nic.down", "nic.fenced")
    return any(e["event"] in down and e.get("nic") == nic and t0 <= e["t"] <= t1 for e in events)


def _end_partition(
    f: Event, events: list[Event], timers: Timers
) -> tuple[float | None, float | None]:
    seconds = f.get("seconds")
    if not isinstance(seconds, int | float):
        return None, None
    pair, heal = frozenset(f.get("nics", [])), f["t"] + seconds
    cleared = [e["t"] for e in events if e["event"] == "chaos.unpartition"
               and f["t"] <= e["t"] < heal and frozenset(e.get("nics", [])) == pair]  # fmt: skip
    heal = min(cleared, default=heal)
    stop = min((e["t"] for e in events if e["t"] > heal and _hits(e, pair)), default=INF)
    end = heal
    for down in _between(events, "nic.peer.down", pair, f["t"], heal + timers.down_after_s):
        ups = _between(events, "nic.peer.up", pair, down["t"], stop)
        up = next((u for u in ups if (u["nic"], u["peer"]) == (down["nic"], down["peer"])), None)
        end = max(end, up["t"]) if up else end
    return end, heal


def _hits(e: Event, nics: frozenset[str]) -> bool:
    """`e` is a fault injected on one of `nics`."""
    return e["event"] in FAULTS and bool(nics & {e.get("nic"), *e.get("nics", [])})


def about(e: Event, pair: frozenset[str]) -> bool:
    """`e` is logged by one NIC of `pair` about the other."""
    return e.get("nic") in pair and e.get("peer") in pair - {e.get("nic")}


def _between(
    events: list[Event], name: str, pair: frozenset[str], t0: float, t1: float
) -> list[Event]:
    """The `name` events in [t0, t1] of one NIC of `pair` about the other."""
    return [e for e in events if e["event"] == name and t0 <= e["t"] <= t1 and about(e, pair)]


def _end_link(f: Event, events: list[Event], timers: Timers) -> tuple[float | None, float | None]:
    up = _first(events, "chaos.link_up", f["t"], port=f.get("port"))
    return (up["t"], up["t"]) if up else (None, None)


def _end_migrate(f: Event, events: list[Event], timers: Timers) -> tuple[float | None, None]:
    """The target's takeover of the moved VPIDs (the host's decision if it took none)."""
    decided = _decision(f, events)
    if decided is None:
        return None, None
    taken = _first(events, "team.takeover", decided["t"], nic=f.get("nic"), epoch=decided["epoch"])
    return (taken or decided)["t"], None


def _end_hostd_pause(
    f: Event, events: list[Event], timers: Timers
) -> tuple[float | None, float | None]:
    resume = _first(events, "chaos.hostd_resume", f["t"], host=f.get("host"))
    return (resume["t"], resume["t"]) if resume else (None, None)


def _end_hostd_kill(
    f: Event, events: list[Event], timers: Timers
) -> tuple[float | None, float | None]:
    """The restarted daemon has its map back (its VMs start from there)."""
    back = [e for e in select(events, "host.recovered", f["t"]) if e.get("host") == f.get("host")]
    return (back[0]["t"], back[0]["t"]) if back else (None, None)


def _end_machine_cut(
    f: Event, events: list[Event], timers: Timers
) -> tuple[float | None, float | None]:
    """Its heal, then fabricd's link back to each of its NICs that it saw go down."""
    healed = _first(events, "chaos.machine_heal", f["t"], machine=f.get("machine"))
    if healed is None:
        return None, None
    heal, end = healed["t"], healed["t"]
    for nic in f.get("nics", []):
        downs = [e for e in select(events, "fabric.nic.down", f["t"], nic=nic) if e["t"] <= heal]
        if downs:
            up = _first(events, "fabric.nic.up", downs[-1]["t"], nic=nic)
            if up is None:
                return None, heal
            end = max(end, up["t"])
    return end, heal


_ENDS = {
    "kill": _end_kill,
    "pause": _end_pause,
    "partition": _end_partition,
    "link-down": _end_link,
    "migrate": _end_migrate,
    "hostd-pause": _end_hostd_pause,
    "hostd-kill": _end_hostd_kill,
    "machine-cut": _end_machine_cut,
}


# -- detection -----------------------------------------------------------------------------------


def _detects(w: Window, e: Event) -> bool:
    if w.kind in NIC_FAULTS:
        return e["event"] == "host.nic.down" and e.get("nic") in w.targets
    if w.kind == "partition":
        return e["event"] == "nic.peer.down" and about(e, w.targets)
    if w.kind == "migrate":  # planned: "detected" is the host's decision
        return e["event"] == "host.migrate" and f"->{e.get('nic')}" in w.what
    if w.kind == "hostd-pause":  # the daemon sees its own stall once it runs again
        return e["event"] == "host.stalled" and e.get("host") in w.targets
    if w.kind == "hostd-kill":  # its card sees it exit
        return e["event"] == "host.worker.exit" and e.get("host") in w.targets
    if w.kind == "machine-cut":  # the fabric loses the machine's NICs
        return e["event"] == "fabric.nic.down" and e.get("nic") in w.targets
    return e["event"] == "team.uplink.down" and e.get("uplink") in w.targets


def detection(w: Window, events: list[Event], timers: Timers) -> Event | None:
    """The first detection event of `w`, up to its end (or its heal + the detection time)."""
    until = max(w.end, (w.heal if w.heal is not None else w.end) + timers.down_after_s)
    return next((e for e in events if w.start <= e["t"] <= until and _detects(w, e)), None)
