"""`nicteam report RUNDIR/logs`: what each fault did, rebuilt from every process's JSON log.

A fault is a `chaos.*` event the CLI or the nemesis logged (kill, pause, partition, link-down,
migrate, host daemon pause and kill). Its **window** runs from the injection to the recovery
(`ctl.windows` says what ends each kind), so windows may overlap (each fault lists the others
it overlaps); a fault with no recovery in the logs runs to the end of the logs (`healed` false).

In the window the report finds, by their stable event names: detection (`host.nic.down`; for a
partition the siblings' `nic.peer.down` of each other; for a cable `team.uplink.down`), the
host's decision (`host.failover`), the commit (`ct.commit`), the first frame on the new path
(`team.first_frame` of that epoch), the resync (`sync.resync.done`), the rejoin and failback. A
fault not detected says why: it healed before the detection time (`heartbeat_s *
heartbeat_misses`), the same target was already down from an overlapping fault, or no event.

Frames lost and connections reset come from the endpoints' own books, which hostd
(`host.flows`) and fabricd (`fabric.flows`) log every `stats_s`, cumulative. What one process's
books gained between two consecutive snapshots happened in that interval (a, b]; a new `boot`
(or a counter that went down) starts from zero, never subtracted across. Flows whose config
says `expect = "deny"` are left out. The **charging rules**, deterministic:

1. An interval goes to the faults injected inside it (a < start <= b), else to the windows it
   overlaps; among several, the largest overlap, then the earliest fault; none: **no fault**.
   A fault injected in an interval is the likeliest cause of what was booked in it; an older
   fault still open (a cable left down) does not swallow a newer one's losses. For charging a
   window reaches BOOKED_LATE_S past its end: a sink books a gap when the next message comes,
   so what the recovery itself lost (a failback's move) is booked a moment after it.
2. A reset is booked when the sender gives up, `give_up` (15 s) after its last progress. With
   the time of last progress in the books (`reset_progress_ts`) a reset is charged by rule 1
   to [progress, progress + LEAD_S]. Without it, to the give-up-shifted interval
   (a - give_up, b - give_up + (b - a)] (the stall began there, or up to an interval before
   the fault that stalled it); failing that, to (a, b] itself (an RST, no give-up).
3. A flow's frames lost in an interval that overlaps (a_r, b_r + FOLLOW_S] of one of its resets
   (TCP loses the messages of a reset connection; the sink books them when the new connection
   delivers, after hostd's reconnect delay) go where that reset went.

Every delta goes to exactly one bucket, so the faults plus "no fault" add up to the totals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from configs import Config, Timers
from ctl.logs import Event, load, select
from ctl.summary import BOOKS, Booked, booked, deny_flows
from ctl.windows import (
    EVENT_OF,
    FAULTS,
    HOST_FAULTS,
    NIC_FAULTS,
    Window,
    about,
    detection,
    windows,
)
from hoststack.tcp import TcpConfig

STEPS = {
    "host.nic.down", "nic.peer.down", "team.uplink.down", "host.failover", "ct.commit",
    "team.first_frame", "sync.resync.start", "sync.resync.done", "nic.rejoin", "host.failback",
    "nic.fenced", "nic.unfenced", "chaos.resume", "chaos.link_up", "nic.peer.up",
    "team.uplink.up", "chaos.unpartition", "host.migrate", "team.takeover",
    "chaos.hostd_resume", "host.stalled", "host.recovered", "host.worker.exit",
    "chaos.machine_heal", "fabric.nic.down", "fabric.nic.up",
}  # fmt: skip
NAMES = set(FAULTS) | STEPS | set(BOOKS)
GIVE_UP_S = TcpConfig().give_up  # hostd's TCP senders give up after this long without progress
LEAD_S = 1.0  # a stall may begin this long before the fault that caused it (the last ACK)
FOLLOW_S = 2.0  # hostd's reconnect delay after a reset (1 s), plus a margin


@dataclass(frozen=True, slots=True)
class Reset:
    """Resets of one flow booked in (since, t], charged as if they happened at `stall`."""

    flow: str
    since: float
    t: float
    stall: float  # when its stall began: logged, or estimated (the time it is charged at)
    fault: int | None  # a fault's id, None: no fault
    count: int = 1


@dataclass(slots=True)
class Tally:
    """Frames lost and connections reset charged to one fault, or to no fault."""

    frames_lost: int = 0
    connections_reset: int = 0
    lost_per_flow: dict[str, int] = field(default_factory=dict)
    resets_per_flow: dict[str, int] = field(default_factory=dict)

    def lose(self, flow: str, n: int) -> None:
        """Charge `n` frames lost (negative: a late arrival filled a gap) of `flow`."""
        self.frames_lost += n
        self.lost_per_flow[flow] = self.lost_per_flow.get(flow, 0) + n
        if not self.lost_per_flow[flow]:
            del self.lost_per_flow[flow]

    def reset(self, flow: str, n: int) -> None:
        """Charge `n` connection resets of `flow`."""
        self.connections_reset += n
        self.resets_per_flow[flow] = self.resets_per_flow.get(flow, 0) + n


@dataclass(slots=True)
class Fault:
    """One injected fault, its window and what followed it."""

    id: int
    kind: str
    nic: str
    at: str
    end: str
    window_ms: float
    healed: bool
    overlaps: list[int] = field(default_factory=list)
    detect_ms: float | None = None
    undetected_why: str | None = None
    takeover_ms: float | None = None
    resync_ms: float | None = None
    tally: Tally = field(default_factory=Tally)
    timeline: list[tuple[float, str, str]] = field(default_factory=list)  # ms after, event, detail

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `--json`: the tally's figures at the top level."""
        out = asdict(self)
        out |= out.pop("tally")
        out["timeline"] = [{"ms": ms, "event": e, "detail": d} for ms, e, d in self.timeline]
        return out


@dataclass(slots=True)
class Analysis:
    """Everything the report and the plot show: windows, faults, the no-fault bucket, resets."""

    windows: list[Window]
    faults: list[Fault]
    no_fault: Tally
    resets: list[Reset]
    excluded: list[str]


# -- entry points ------------------------------------------------------------------------------


def report(logs: Path, config: Config | None = None) -> dict[str, Any]:
    """Every fault in the logs, in order, with its window, timeline, losses and resets.

    With `config`, its timers (detection time) and its deny flows (left out of the books) are
    used; without, the default timers and every flow. Logs with no fault give `{"faults": []}`.
    """
    return as_report(analyse(load(logs, NAMES), config))


def analyse(events: list[Event], config: Config | None = None) -> Analysis:
    """Windows, detections and timelines, then every book delta charged to one bucket."""
    timers = config.timers if config is not None else Timers()
    last = _last(events)
    wins = windows(events, timers, last)
    faults = _faults(wins, events, timers, last)
    no_fault = Tally()
    tally = {f.id: f.tally for f in faults} | {None: no_fault}
    excluded = deny_flows(config)
    books = booked(events, excluded)
    resets = [r for bk in books for flow in sorted(bk.resets) for r in _resets(bk, flow, wins)]
    for r in resets:
        tally[r.fault].reset(r.flow, r.count)
    for bk in books:
        for flow, n in sorted(bk.lost.items()):
            if n:
                tally[_lost_to(bk, flow, wins, resets)].lose(flow, n)
    return Analysis(wins, faults, no_fault, resets, sorted(excluded))


def as_report(an: Analysis) -> dict[str, Any]:
    """The `--json` form: faults, the no-fault bucket, totals, the resets and where they went."""
    if not an.faults:
        return {"faults": []}
    tallies = [f.tally for f in an.faults] + [an.no_fault]
    totals = {k: sum(getattr(t, k) for t in tallies) for k in ("frames_lost", "connections_reset")}
    return {
        "faults": [f.as_dict() for f in an.faults],
        "no_fault": asdict(an.no_fault),
        "totals": totals,
        "resets": [_reset_dict(r) for r in an.resets],
        "excluded_flows": an.excluded,
    }


def _reset_dict(r: Reset) -> dict[str, Any]:
    return {
        "flow": r.flow,
        "at": _iso(r.t),
        "stall_at": _iso(r.stall),
        "fault": r.fault,
        "count": r.count,
    }


# -- windows -----------------------------------------------------------------------------------


def _last(events: list[Event]) -> float:
    """The time of the last event the report reads: the end of the logs."""
    return max((e["t"] for e in events if e["event"] in NAMES), default=0.0)


# -- detection and timelines -------------------------------------------------------------------


def _why_undetected(
    w: Window, detected: dict[int, bool], wins: list[Window], timers: Timers, last: float
) -> str:
    """Why `w` has no detection event (`detected`: which faults have one)."""
    limit = timers.down_after_s
    if w.heal is not None and w.heal - w.start < limit:
        lasted, need = (w.heal - w.start) * 1000, limit * 1000
        return f"healed before the detection window ({lasted:.0f} ms < {need:.0f} ms)"
    for o in wins:
        if o.id < w.id and o.targets == w.targets and o.end >= w.start and detected[o.id]:
            return f"already down: detected with #{o.id}, not yet healed"
    if last < w.start + limit:
        return "the logs end before it could be detected"
    return "no detection event found"


def _faults(wins: list[Window], events: list[Event], timers: Timers, last: float) -> list[Fault]:
    """Each window's fault: detection (or why none), overlaps, timeline."""
    found = {w.id: detection(w, events, timers) for w in wins}
    detected = {i: e is not None for i, e in found.items()}
    out = []
    for w in wins:
        fault = _timeline(w, events, found[w.id])
        fault.overlaps = [o.id for o in wins if o.id != w.id and _overlap(o, w)]
        if found[w.id] is None:
            fault.undetected_why = _why_undetected(w, detected, wins, timers, last)
        out.append(fault)
    return out


def _overlap(a: Window, b: Window) -> bool:
    return a.start <= b.end and b.start <= a.end


def _timeline(w: Window, events: list[Event], detected: Event | None) -> Fault:
    t0 = w.start
    inside = [e for e in events if t0 <= e["t"] <= w.end and e["event"] not in BOOKS]
    fault = Fault(w.id, w.kind, w.what, _iso(t0), _iso(w.end), _ms(w.end, t0), w.healed)

    def note(e: Event, detail: str) -> None:
        fault.timeline.append((_ms(e["t"], t0), e["event"], detail))

    fault.timeline.append((0.0, EVENT_OF[w.kind], f"{w.kind} {w.what}"))
    if detected is not None:
        fault.detect_ms = _ms(detected["t"], t0)
        said = _step(w, detected) or detected.get("nic") or detected.get("peer") or ""
        note(detected, str(said))
    for e in (x for x in inside if x["event"] == "host.failover" and w.kind in NIC_FAULTS):
        if not set(e.get("nics") or [e.get("nic")]) & w.targets:
            continue  # (NICs lost together are failed over in one epoch)
        note(e, f"epoch {e['epoch']}: " + " ".join(f"{v}->{n}" for v, n in e["moves"]))
        for c in (x for x in inside if x["event"] == "ct.commit" and x.get("epoch") == e["epoch"]):
            note(c, f"{c['nic']} commits {c['records']} records of {c['origin']}")
        firsts = select(inside, "team.first_frame", 0.0, epoch=e["epoch"])
        if firsts:
            fault.takeover_ms = _ms(firsts[0]["t"], t0)
            note(firsts[0], f"{firsts[0]['nic']} vpid {firsts[0]['vpid']} {firsts[0]['way']}")
    for e in inside:
        detail = _step(w, e)
        if detail is not None and e is not detected:
            note(e, detail)
        if e["event"] == "sync.resync.done" and detail is not None:
            fault.resync_ms = e.get("ms")
    fault.timeline.sort()
    return fault


NIC_STEPS = (
    "chaos.resume",
    "nic.fenced",
    "nic.unfenced",
    "sync.resync.start",
    "nic.rejoin",
    "host.failback",
)


HOST_STEPS = ("chaos.hostd_resume", "host.recovered")
MACHINE_STEPS = ("chaos.machine_heal", "fabric.nic.down", "fabric.nic.up")


def _machine_step(w: Window, e: Event) -> str | None:
    """The cut machine's cable back, or fabricd losing or regaining one of its NICs."""
    if e["event"] == "chaos.machine_heal":
        return "cable back" if w.what.startswith(f"{e.get('machine')} ") else None
    if e.get("nic") not in w.targets:
        return None
    return f"fabricd {'loses' if e['event'] == 'fabric.nic.down' else 'reaches'} {e['nic']}"


def _step(w: Window, e: Event) -> str | None:
    """The timeline detail of a recovery step of `w`, None if `e` is not one."""
    name, nic = e["event"], e.get("nic")
    if name in NIC_STEPS and nic in w.targets:
        return str(nic)
    if name == "sync.resync.done" and nic in w.targets:
        return f"{nic}: {e.get('records')} records in {e.get('ms')} ms"
    if name == "nic.peer.up" and w.kind == "partition" and about(e, w.targets):
        return f"{nic} hears {e.get('peer')}"
    if name == "chaos.unpartition" and frozenset(e.get("nics", [])) == w.targets:
        return "healed early"
    if w.kind in HOST_FAULTS and e.get("host") in w.targets and name in HOST_STEPS:
        return str(e.get("epoch", e.get("stalled_ms", "")))
    if name == "team.takeover" and w.kind == "migrate" and f"->{nic}" in w.what:
        return f"{nic} takes {e.get('records')} records"
    if w.kind == "machine-cut" and name in MACHINE_STEPS:
        return _machine_step(w, e)
    if name in ("chaos.link_up", "team.uplink.up") and w.kind == "link-down":
        port = e.get("port") if name == "chaos.link_up" else e.get("uplink")
        return str(nic or port) if port in w.targets else None
    return None


# -- charging ----------------------------------------------------------------------------------


def charge(a: float, b: float, wins: list[Window]) -> int | None:
    """The fault (id) the interval (a, b] is charged to, None for no fault (rule 1)."""
    started = [w for w in wins if a < w.start <= b]
    pool = started or [w for w in wins if w.touches(a, b)]
    if not pool:
        return None
    return max(pool, key=lambda w: (w.overlap(a, b), -w.id)).id


def _resets(bk: Booked, flow: str, wins: list[Window]) -> list[Reset]:
    """The resets of `flow` booked in `bk`, each charged (rule 2)."""
    n, known = bk.resets[flow], bk.progress.get(flow, ())
    out = [Reset(flow, bk.a, bk.b, p, charge(p, p + LEAD_S, wins)) for p in known]
    if n > len(known):
        a, b = bk.a - GIVE_UP_S, bk.b - GIVE_UP_S + (bk.b - bk.a)
        fault, stall = charge(a, b, wins), (bk.a + bk.b) / 2 - GIVE_UP_S
        if fault is None:
            fault = charge(bk.a, bk.b, wins)
            stall = (bk.a + bk.b) / 2 if fault is not None else stall
        if fault is not None:  # the estimate, inside the window it is charged to
            w = wins[fault - 1]
            stall = min(max(stall, w.start), w.end)
        out.append(Reset(flow, bk.a, bk.b, stall, fault, n - len(known)))
    return out


def _lost_to(bk: Booked, flow: str, wins: list[Window], resets: list[Reset]) -> int | None:
    """Where frames of `flow` lost in `bk` go: after one of its resets, with it (rule 3)."""
    near = [r for r in resets if r.flow == flow and r.since < bk.b and bk.a < r.t + FOLLOW_S]
    if near:
        return max(near, key=lambda r: (r.t, r.stall)).fault
    return charge(bk.a, bk.b, wins)


# -- text --------------------------------------------------------------------------------------


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")


def _ms(t: float, t0: float) -> float:
    return round((t - t0) * 1000, 1)


def format_report(rep: dict[str, Any]) -> str:
    """Each fault: a header with its figures and window, then its timeline; then no fault."""
    lines = []
    for f in rep["faults"]:
        lines.append(_header(f))
        if f.get("overlaps"):
            lines.append("  OVERLAPS " + ", ".join(f"#{i}" for i in f["overlaps"]))
        for step in f["timeline"]:
            lines.append(f"  {step['ms']:>9.1f} ms  {step['event']:<18} {step['detail']}")
        for key, what in (("lost_per_flow", "lost"), ("resets_per_flow", "resets")):
            if f.get(key):
                per = ", ".join(f"{k} {v}" for k, v in sorted(f[key].items()))
                lines.append(f"  {what} per flow: {per}")
    if not lines:
        return "no faults in these logs (chaos.* events)"
    lines += _footer(rep)
    return "\n".join(lines)


def _header(f: dict[str, Any]) -> str:
    """`at  #id kind target: figures, window`, and why it was not detected on a second line."""
    figures = [
        f"detect {f['detect_ms']} ms" if f["detect_ms"] is not None else "not detected",
        f"takeover {f['takeover_ms']} ms" if f["takeover_ms"] is not None else None,
        f"resync {f['resync_ms']} ms" if f["resync_ms"] is not None else None,
        f"{f['frames_lost']} frames lost",
        f"{f['connections_reset']} connections reset",
        _window(f),
    ]
    head = f"{f['at']}  #{f['id']} " if "id" in f else f"{f['at']}  "
    why = f.get("undetected_why")
    tail = f"\n  not detected: {why}" if why else ""
    return head + f"{f['kind']} {f['nic']}: " + ", ".join(x for x in figures if x) + tail


def _window(f: dict[str, Any]) -> str | None:
    if f.get("window_ms") is None:
        return None
    return f"window {f['window_ms']} ms" + ("" if f["healed"] else " (to the end of the logs)")


def _footer(rep: dict[str, Any]) -> list[str]:
    lines = []
    nf = rep.get("no_fault")
    if nf is not None:
        figures = f"{nf['frames_lost']} frames lost, {nf['connections_reset']} connections reset"
        lines.append(f"no fault: {figures} (outside every fault window)")
        for key, what in (("lost_per_flow", "lost"), ("resets_per_flow", "resets")):
            if nf.get(key):
                per = ", ".join(f"{k} {v}" for k, v in sorted(nf[key].items()))
                lines.append(f"  {what} per flow: {per}")
    if rep.get("totals"):
        t = rep["totals"]
        figures = f"{t['frames_lost']} frames lost, {t['connections_reset']} connections reset"
        lines.append(f"total: {figures} (faults and no fault)")
    if rep.get("excluded_flows"):
        lines.append('not counted (expect = "deny"): ' + ", ".join(rep["excluded_flows"]))
    return lines
