"""The checker of `nicteam chaos run`: a verdict on a run from the endpoints' books and the logs.

Pure functions over the merged log events (`ctl.logs.load`), so a run can be judged again from
its logs alone (`nicteam chaos check`). The nemesis logs what the checker needs beside the
daemons' own events: `chaos.nemesis.start` (seed, the books before the first fault),
every fault with its step number, and `chaos.quiet` (whether the cluster settled, the state
digests, the books at the end). `judge()` reports, per flow: connections established and
reset (flows the firewall must deny excluded), frames lost, longest stall; per fault: its
window (injection to recovery), detection, takeover and frames lost in it; and the invariants:

1. at most one NIC holds a VPID at any map epoch (each NIC's `map.epoch` lists its VPIDs);
2. no VPID is unowned (its NIC in the map dead, hung, declared down, or not holding it yet)
   longer than detection + a takeover allowance; time when no NIC of its host is up, or its
   host daemon is stopped, does not count: nobody could take the VPID over then;
3. each NIC's state digest equals its siblings' copies after quiet (`ctl.verify`);
4. no connection of a flow that must deliver is reset, unless by a loss no failover survives
   (every NIC of the host down at once, or the host daemon with its VMs killed);
5. the cluster got quiet: every NIC up, VPIDs where the map says, every flow delivering.

Any of them false makes the run `invalid`; the verdict names the seed and the command that
plays the same schedule again.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.nicstate import NicState
from configs import Config
from ctl.bookseries import BookSeries
from ctl.logs import Event, load
from ctl.report import GIVE_UP_S, analyse
from ctl.report import NAMES as REPORT_EVENTS
from ctl.windows import EVENT_OF

EVENTS = REPORT_EVENTS | {
    "chaos.nemesis.start", "chaos.nemesis.stop", "chaos.quiet", "chaos.skip", "chaos.error",
    "chaos.resume", "chaos.link_up", "chaos.hostd_resume", "host.start", "host.failover",
    "host.failback", "host.migrate", "host.nic.down", "host.nic.state", "map.epoch",
    "nic.worker.exit", "nic.fenced", "nic.unfenced", "nic.rejoin", "team.first_frame",
    "host.flows", "fabric.flows", "host.recovered",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Params:
    """What the checker needs of the config: flows, NICs per host, timers and its bounds."""

    flows: tuple[tuple[str, str, str], ...]  # (name, proto, expect)
    hosts: tuple[tuple[str, tuple[str, ...]], ...]  # (host, its NICs)
    detect_s: float = 0.15
    takeover_s: float = 0.5
    stats_s: float = 1.0
    config: Config | None = field(default=None, compare=False)  # for ctl.report's charging

    @property
    def bound_s(self) -> float:
        """The longest a VPID may go unowned: detection plus the takeover allowance."""
        return self.detect_s + self.takeover_s

    @property
    def excuse_s(self) -> float:
        """How long after a state loss a reset still shows up: TCP gives up, books are logged."""
        return GIVE_UP_S + 2 * self.stats_s

    @classmethod
    def from_config(cls, config: Config) -> Params:
        """From the cluster's config; the allowance is ten heartbeats (0.5 s by default)."""
        t = config.timers
        return cls(
            tuple((f.name, f.proto, f.expect) for f in config.flows),
            tuple((h.name, tuple(n.name for n in h.nics)) for h in config.hosts),
            t.down_after_s,
            max(0.25, 10 * t.heartbeat_s),
            t.stats_s,
            config,
        )


class Index:
    """The events of a run by name, each list in time order, for fast `first` lookups."""

    def __init__(self, events: Iterable[Event]) -> None:
        self.all = sorted(events, key=lambda e: e["t"])
        self.by: dict[str, list[Event]] = defaultdict(list)
        for e in self.all:
            self.by[e["event"]].append(e)
        self._times = {name: [e["t"] for e in es] for name, es in self.by.items()}

    def first(
        self, name: str, after: float, before: float = float("inf"), **fields: Any
    ) -> Event | None:
        """The first `name` event in [after, before] whose fields have these values."""
        es = self.by.get(name, [])
        for e in es[bisect.bisect_left(self._times.get(name, []), after) :]:
            if e["t"] > before:
                return None
            if all(_has(e, k, v) for k, v in fields.items()):
                return e
        return None

    def between(self, name: str, after: float, before: float) -> list[Event]:
        """The `name` events in [after, before]."""
        times = self._times.get(name, [])
        lo, hi = bisect.bisect_left(times, after), bisect.bisect_right(times, before)
        return self.by.get(name, [])[lo:hi]


def _has(e: Event, key: str, value: Any) -> bool:
    # `nic=` also matches an event about several NICs (`nics`), e.g. a kill of two at once.
    return e.get(key) == value or (key == "nic" and value in (e.get("nics") or ()))


def nics_of(e: Event) -> list[str]:
    """The NICs an event is about: `nics`, else `nic`."""
    return list(e.get("nics") or ([e["nic"]] if e.get("nic") else []))


def flow_rows(series: BookSeries, params: Params, t0: float, t1: float) -> list[dict[str, Any]]:
    """Per configured flow, what happened between `t0` and `t1` (resets: deliver flows only)."""
    a, b = series.at(t0), series.at(t1)
    rows = []
    for name, proto, expect in params.flows:
        x, y = a.get(name, {}), b.get(name, {})

        def d(c: str, x: dict[str, float] = x, y: dict[str, float] = y) -> int:
            return round(y.get(c, 0) - x.get(c, 0))

        deliver = expect == "deliver"
        rows.append({
            "flow": name, "proto": proto, "expect": expect, "established": d("connects"),
            "resets": d("resets") if deliver else None, "lost": d("gaps"),
            "delivered": d("delivered"),
            "stall_ms": round(y.get("stall_ms", 0.0), 1) if deliver else None,
        })  # fmt: skip
    return rows


# ------------------------------------------------------------------------------- fault windows


def windows(
    events: list[Event], ix: Index, params: Params, t0: float, t1: float
) -> list[dict[str, Any]]:
    """Every fault injected in [t0, t1] with its window (injection to recovery), detection,
    takeover, and the frames lost and resets `ctl.report` charges to it (each loss to one
    fault). A kill of two NICs at once (two `chaos.kill` of one step) is one fault."""
    an = analyse(events, params.config)
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for w, f in zip(an.windows, an.faults, strict=True):
        if not t0 <= w.start <= t1:
            continue
        e = ix.first(EVENT_OF[w.kind], w.start, w.start)
        step = e.get("step") if e else None
        row = {"step": step, "kind": "link" if w.kind == "link-down" else w.kind,
               "targets": sorted(w.targets), "start": w.start, "end": w.end,
               "healed": w.healed, "detect_ms": f.detect_ms, "takeover_ms": f.takeover_ms,
               "lost": f.tally.frames_lost, "resets": f.tally.connections_reset,
               "lost_per_flow": dict(f.tally.lost_per_flow),
               "overlapped": bool(f.overlaps)}  # fmt: skip
        key = (step,) if step is not None else (w.id,)
        out[key] = _merge(out[key], row) if key in out else row
    rows = sorted(out.values(), key=lambda r: r["start"])
    for r in rows:
        r["at_s"], r["window_ms"] = round(r["start"] - t0, 3), _ms(r["end"] - r["start"])
    return rows


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two NICs killed in one step: one fault, the union of what each window saw."""
    out = a | {"kind": "kill2", "targets": sorted({*a["targets"], *b["targets"]}),
               "end": max(a["end"], b["end"]), "healed": a["healed"] and b["healed"],
               "lost": a["lost"] + b["lost"], "resets": a["resets"] + b["resets"]}  # fmt: skip
    for k in ("detect_ms", "takeover_ms"):
        got = [x for x in (a[k], b[k]) if x is not None]
        out[k] = min(got) if got else None
    out["lost_per_flow"] = {f: a["lost_per_flow"].get(f, 0) + b["lost_per_flow"].get(f, 0)
                            for f in {*a["lost_per_flow"], *b["lost_per_flow"]}}  # fmt: skip
    return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# ------------------------------------------------------------------------------- invariants


def epoch_conflicts(ix: Index, t0: float, t1: float) -> tuple[list[str], int]:
    """Invariant 1: VPIDs two NICs of a host held at the same epoch; and how many epochs."""
    held: dict[tuple[str, int], dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
    seen: dict[tuple[str, int], float] = {}
    for e in ix.by.get("map.epoch", []):
        if not e.get("nic") or "vpids" not in e:
            continue  # hostd's own map.epoch: the decision, not a NIC's holding
        key = (str(e.get("host")), int(e["epoch"]))
        held[key][e["nic"]] |= set(e["vpids"])  # a NIC may log an epoch twice (a reboot)
        seen[key] = max(seen.get(key, 0.0), e["t"])
    findings = []
    in_run = [k for k in sorted(held) if t0 <= seen[k] <= t1]
    for host, epoch in in_run:
        nics = sorted(held[(host, epoch)].items())
        for i, (a, va) in enumerate(nics):
            for b, vb in nics[i + 1 :]:
                if both := va & vb:
                    findings.append(f"{host} epoch {epoch}: VPIDs {sorted(both)} held by both "
                                    f"{a} and {b}")  # fmt: skip
    return findings, len(in_run)


@dataclass(slots=True)
class _Host:
    """One host as the ownership sweep sees it at a moment."""

    nics: tuple[str, ...]
    owner: dict[int, str] = field(default_factory=dict)  # hostd's map
    held: dict[str, set[int]] = field(default_factory=dict)  # each NIC's latest map.epoch
    stopped: set[str] = field(default_factory=set)  # SIGSTOPped by the nemesis
    fenced: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)  # declared down by hostd
    seen: dict[str, str] = field(default_factory=dict)  # NIC state as hostd last heard it
    hostd_out: bool = False
    open: dict[int, list[float]] = field(default_factory=dict)  # VPID -> [since, counted s]

    def served(self, vpid: int) -> bool:
        o = self.owner.get(vpid)
        return (o is not None and o not in self.down and o not in self.stopped
                and o not in self.fenced and vpid in self.held.get(o, ()))  # fmt: skip

    def blackout(self) -> bool:
        """No NIC of the host is up as hostd sees it: nobody to take a VPID over."""
        return not any(self.seen.get(n) == NicState.UP and n not in self.down for n in self.nics)


@dataclass(slots=True)
class Ownership:
    """Invariant 2's findings, the longest unowned time per VPID, and the hosts' blackouts."""

    t0: float = 0.0  # the run's start: findings say times relative to it
    findings: list[str] = field(default_factory=list)
    longest: dict[str, float] = field(default_factory=dict)  # "host/vpid" -> seconds
    blackouts: list[tuple[str, float, float]] = field(default_factory=list)


_SWEEP = ("host.start", "host.recovered", "host.failover", "host.failback", "host.migrate",
          "host.nic.down", "host.nic.state", "map.epoch", "nic.worker.exit", "nic.fenced",
          "nic.unfenced", "chaos.kill", "chaos.pause", "chaos.resume", "chaos.hostd_pause",
          "chaos.hostd_resume", "chaos.hostd_kill")  # fmt: skip


def ownership(ix: Index, params: Params, t0: float, t1: float) -> Ownership:
    """Invariant 2: replay who owns each VPID; time it unowned while someone could own it."""
    hosts = {name: _Host(nics) for name, nics in params.hosts}
    host_of = {n: name for name, nics in params.hosts for n in nics}
    out = Ownership(t0)
    dark: dict[str, float] = {}  # host -> when its blackout began
    events = sorted((e for name in _SWEEP for e in ix.by.get(name, [])), key=lambda e: e["t"])
    last = t0
    for e in [*events, {"event": "end", "t": t1}]:
        t = min(max(e["t"], t0), t1)
        for h in hosts.values():  # the time since the last event counts for whoever is unowned
            if not (h.hostd_out or h.blackout()):
                for episode in h.open.values():
                    episode[1] += max(0.0, t - last)
        last = t
        if e["event"] == "end":
            break
        nics = nics_of(e)
        touched = hosts.get(str(e.get("host") or (host_of.get(nics[0], "") if nics else "")))
        if touched is None:
            continue
        _apply(touched, e)
        for host_name, hh in hosts.items():
            _episodes(host_name, hh, e["t"], params, out)
            if hh.blackout() and host_name not in dark:
                dark[host_name] = e["t"]
            elif not hh.blackout() and host_name in dark:
                out.blackouts.append((host_name, dark.pop(host_name), e["t"]))
    for host_name, h in hosts.items():
        for vpid in list(h.open):
            _close(host_name, h, vpid, params, out)
    out.blackouts += [(h, since, t1) for h, since in dark.items()]
    return out


def _apply(h: _Host, e: Event) -> None:
    """One event's effect on the host's picture."""
    name, nics = e["event"], nics_of(e)
    if name in ("host.start", "host.recovered"):
        # A (re)started host daemon decides nothing until it recovered the map from its NICs.
        # It declared nobody down yet; what the earlier one heard of the NICs stays our belief
        # of their states until it hears them anew.
        if "vpids" in e:
            h.owner = {int(v): str(n) for v, n, *_ in e["vpids"]}
        if name == "host.start":
            h.down = set()
        h.hostd_out = name == "host.start"
    elif name in ("host.failover", "host.failback", "host.migrate"):
        h.owner.update({int(v): str(to) for v, to in e.get("moves", [])})
        if name == "host.failback":
            h.down.discard(e["nic"])
            h.seen[e["nic"]] = NicState.UP
    elif name == "host.nic.down":
        h.down.add(e["nic"])
        h.seen[e["nic"]] = NicState.DOWN
    elif name == "host.nic.state":
        h.seen[e["nic"]] = str(e.get("state"))
    elif name == "map.epoch" and e.get("nic") and "vpids" in e:
        h.held[e["nic"]] = {int(v) for v in e["vpids"]}
    elif name in ("chaos.kill", "nic.worker.exit"):
        for n in nics:  # dead: holds nothing, and is no longer stopped or fenced
            h.held[n] = set()
            h.stopped.discard(n)
            h.fenced.discard(n)
    elif name in ("chaos.pause", "chaos.resume"):
        (h.stopped.add if name == "chaos.pause" else h.stopped.discard)(e["nic"])
    elif name in ("nic.fenced", "nic.unfenced"):
        (h.fenced.add if name == "nic.fenced" else h.fenced.discard)(e["nic"])
    elif name in ("chaos.hostd_pause", "chaos.hostd_kill"):
        h.hostd_out = True
    elif name == "chaos.hostd_resume":
        h.hostd_out = False


def _episodes(host: str, h: _Host, t: float, params: Params, out: Ownership) -> None:
    """Open an unowned episode for each VPID that just lost its owner, close the others'."""
    for vpid in h.owner:
        if h.served(vpid):
            if vpid in h.open:
                _close(host, h, vpid, params, out)
        elif vpid not in h.open:
            h.open[vpid] = [t, 0.0]


def _close(host: str, h: _Host, vpid: int, params: Params, out: Ownership) -> None:
    since, counted = h.open.pop(vpid)
    key = f"{host}/{vpid}"
    out.longest[key] = round(max(out.longest.get(key, 0.0), counted), 3)
    if counted > params.bound_s:
        owner = h.owner.get(vpid)
        out.findings.append(f"{host} VPID {vpid}: unowned for {counted:.2f} s from "
                            f"+{since - out.t0:.3f} s (the map gives it to {owner})")  # fmt: skip


def reset_findings(series: BookSeries, ix: Index, params: Params, t0: float, t1: float,
                   blackouts: list[tuple[str, float, float]]) -> tuple[list[str], int]:  # fmt: skip
    """Invariant 4: resets of deliver flows not excused by a loss no failover survives."""
    excuses = [(s, e) for _, s, e in blackouts]
    for kill in ix.between("chaos.hostd_kill", t0, t1):
        back = ix.first("host.start", kill["t"], proc=kill.get("host"))
        excuses.append((kill["t"], back["t"] if back else t1))
    deliver = [name for name, _, expect in params.flows if expect == "deliver"]
    findings, excused = [], 0
    for t, before, now in series.steps(t0, t1 + params.stats_s):
        for flow in deliver:
            n = round(now.get(flow, {}).get("resets", 0) - before.get(flow, {}).get("resets", 0))
            if n <= 0:
                continue
            if any(s <= t <= e + params.excuse_s for s, e in excuses):
                excused += n
            else:
                findings.append(f"{flow}: {n} connection(s) reset by +{t - t0:.3f} s")
    return findings, excused


def quiet_findings(quiet: Event | None) -> tuple[list[str], list[str]]:
    """Invariants 5 and 3 from the nemesis' `chaos.quiet` event: settled, digests equal."""
    if quiet is None:
        missing = ["no chaos.quiet event: the run did not finish"]
        return missing, missing
    settled = [] if quiet.get("ok") else [f"not quiet after {quiet.get('seconds')} s: "
                                          + "; ".join(quiet.get("problems", []))]  # fmt: skip
    digests = [f"{p['origin']} vs {p['holder']}'s copy: {p['status']}"
               for p in quiet.get("digests", []) if p.get("status") != "match"]  # fmt: skip
    if not quiet.get("digests_ok", False) and not digests:
        digests = ["state digests never compared"]
    return settled, digests


# ------------------------------------------------------------------------------- the verdict


def judge(events: Iterable[Event], params: Params) -> dict[str, Any]:
    """The verdict on the latest nemesis run in `events`: flows, faults, invariants, notes."""
    ix = Index(events)
    starts = ix.by.get("chaos.nemesis.start", [])
    start: Event = starts[-1] if starts else {}
    first_t: float = ix.all[0]["t"] if ix.all else 0.0
    t0: float = start.get("t", first_t)
    quiet = ix.first("chaos.quiet", t0)
    t1 = quiet["t"] if quiet else (ix.all[-1]["t"] if ix.all else t0)
    books = ("host.flows", "fabric.flows", "chaos.nemesis.start", "chaos.quiet")
    series = BookSeries(e for e in ix.all if e["event"] in books)
    rows = flow_rows(series, params, t0, t1)
    wins = windows(ix.all, ix, params, t0, t1)
    conflicts, epochs = epoch_conflicts(ix, t0, t1)
    own = ownership(ix, params, t0, t1)
    resets, excused = reset_findings(series, ix, params, t0, t1, own.blackouts)
    settled, digests = quiet_findings(quiet)
    longest = max(own.longest.values(), default=0.0)
    invariants = [
        _invariant("one NIC per VPID per epoch", conflicts, f"{epochs} epochs"),
        _invariant(f"no VPID unowned longer than {params.bound_s:.2f} s (detection "
                   f"{params.detect_s:.2f} s + takeover {params.takeover_s:.2f} s)", own.findings,
                   f"longest {longest:.3f} s"),
        _invariant("state digests equal after quiet", digests, ""),
        _invariant("no connection of a deliver flow reset (unless its host lost every NIC "
                   "or its daemon)", resets, f"{excused} excused" if excused else ""),
        _invariant("quiet after healing", settled,
                   f"after {quiet.get('seconds')} s" if quiet else ""),
    ]  # fmt: skip
    deliver = [r for r in rows if r["expect"] == "deliver"]
    totals = {
        "established": sum(r["established"] for r in rows),
        "resets": sum(r["resets"] for r in deliver),
        # of which excused: a host daemon crash (its built-in VMs die with it) or a host that
        # lost every NIC at once (no failover survives that)
        "resets_excused": excused,
        "lost": sum(r["lost"] for r in deliver),
        "longest_stall_ms": max((r["stall_ms"] for r in deliver), default=0.0),
    }
    return {
        "seed": start.get("seed"),
        "seconds": start.get("seconds"),
        "faults": start.get("faults"),
        "config": start.get("config"),
        "command": replay_command(start),
        "valid": all(i["ok"] for i in invariants),
        "played": len(wins),
        "skipped": len(ix.between("chaos.skip", t0, t1)),
        "failed": len(ix.between("chaos.error", t0, t1)),
        "flows": rows,
        "totals": totals,
        "windows": [{k: v for k, v in w.items() if k not in ("start", "end")} for w in wins],
        "invariants": invariants,
        "blackouts": [
            {"host": h, "at_s": round(s - t0, 3), "ms": round((e - s) * 1000, 1)}
            for h, s, e in own.blackouts
            if e >= t0
        ],
        "notes": _notes(ix, wins, start, quiet, t0, t1),
    }


def _invariant(name: str, findings: list[str], summary: str) -> dict[str, Any]:
    return {"name": name, "ok": not findings, "findings": findings, "summary": summary}


def replay_command(start: Event) -> str | None:
    """The command that plays the same schedule again, from `chaos.nemesis.start`."""
    if start.get("seed") is None:
        return None
    run = f"--seconds {start.get('seconds'):g} --seed {start['seed']}"
    faults = ",".join(start.get("faults") or [])
    return f"nicteam up --config {start.get('config')} && nicteam chaos run {run} --faults {faults}"


def _notes(ix: Index, wins: list[dict[str, Any]], start: Event, quiet: Event | None, t0: float,
           t1: float) -> list[str]:  # fmt: skip
    """What is worth a look but no invariant forbids: NICs declared down with no fault on
    them (a spurious failover), frames a NIC delivered for a port it no longer held."""
    notes = []
    for down in ix.between("host.nic.down", t0, t1):
        nic, t = down["nic"], down["t"]
        if not any(nic in w["targets"] and w["kind"] in ("kill", "kill2", "pause")
                   and w["start"] <= t <= w["end"] + 1.0 for w in wins):  # fmt: skip
            notes.append(f"{down.get('host')} declared {nic} down at +{t - t0:.3f} s with no "
                         "kill or pause of it in effect")  # fmt: skip
    before, after = start.get("stale") or {}, (quiet or {}).get("stale") or {}
    for host, per_nic in after.items():
        for nic, n in per_nic.items():
            if (grew := n - before.get(host, {}).get(nic, 0)) > 0:
                notes.append(f"{host} got {grew} frames from {nic} for ports it no longer held")
    return notes


def format_verdict(v: dict[str, Any]) -> str:
    """The verdict as text: flows, faults, invariants, notes, and the replay command."""
    lines = [f"chaos run: seed {v['seed']}, {v['seconds']} s of {','.join(v['faults'] or [])} "
             f"on {v['config']}: {v['played']} faults played, {v['skipped']} skipped, "
             f"{v['failed']} failed"]  # fmt: skip
    lines.append(f"{'flow':<20} {'proto':<5} {'expect':<7} {'established':>11} {'resets':>7} "
                 f"{'lost':>6} {'longest stall ms':>16}")  # fmt: skip
    for r in v["flows"]:
        resets = "-" if r["resets"] is None else r["resets"]
        stall = "-" if r["stall_ms"] is None else r["stall_ms"]
        lines.append(f"{r['flow']:<20} {r['proto']:<5} {r['expect']:<7} {r['established']:>11} "
                     f"{resets!s:>7} {r['lost']:>6} {stall!s:>16}")  # fmt: skip
    t = v["totals"]
    lines.append(f"{'total':<34} {t['established']:>11} {t['resets']:>7} {t['lost']:>6} "
                 f"{t['longest_stall_ms']:>16}")  # fmt: skip
    lines.append("faults (window: injection -> recovery; frames lost and resets as "
                 "`nicteam report` charges them, each to one fault)")  # fmt: skip
    lines.append(f"  {'at s':>8}  {'fault':<24} {'window ms':>10} {'detect ms':>10} "
                 f"{'takeover ms':>11} {'lost':>5} {'reset':>5}")  # fmt: skip
    for w in v["windows"]:
        what, took = f"{w['kind']} {' '.join(w['targets'])}", _opt(w["takeover_ms"])
        lines.append(f"  {w['at_s']:>8.3f}  {what:<24} {w['window_ms']:>10} "
                     f"{_opt(w['detect_ms']):>10} {took:>11} {_opt(w['lost']):>5} "
                     f"{_opt(w['resets']):>5}")  # fmt: skip
    lines.append("invariants")
    for i, inv in enumerate(v["invariants"], 1):
        summary = f" ({inv['summary']})" if inv["summary"] else ""
        lines.append(f"  {'ok' if inv['ok'] else 'VIOLATED':<9} {i}. {inv['name']}{summary}")
        lines += [f"      - {f}" for f in inv["findings"][:20]]
        if len(inv["findings"]) > 20:
            lines.append(f"      ... and {len(inv['findings']) - 20} more")
    if v["blackouts"]:
        dark = ", ".join(f"{b['host']} +{b['at_s']} s for {b['ms']} ms" for b in v["blackouts"])
        lines.append(f"blackouts (no NIC of the host up): {dark}")
    lines += [f"note: {n}" for n in v["notes"]]
    lines.append(f"verdict: {'valid' if v['valid'] else 'INVALID'} (seed {v['seed']})")
    if v["command"]:
        lines.append(f"replay: {v['command']}")
    return "\n".join(lines)


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:g}"


# ------------------------------------------------------------------------------- the driver


def check_logs(config: Config, logs: Path | None = None) -> dict[str, Any]:
    """Judge the latest nemesis run in a run's logs (default: the config's run directory)."""
    return judge(load(logs or config.run_dir / "logs", EVENTS), Params.from_config(config))
