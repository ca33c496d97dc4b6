"""`nicteam report --plot`: each NIC's throughput over a run, with the faults marked, as a PNG.

Every NIC worker logs `nic.stats` (cumulative counters since the worker started) every
`stats_s`; a rate is the difference between two samples over the time between them. A worker
that is killed starts its counters again from 0 when its card reboots it (it logs `nic.start`),
and while it is down or paused it logs nothing: that stretch is left as a break in its line
(a NaN point) rather than drawn across as if frames had flowed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from ctl.logs import Event, load
from ctl.report import FAULTS
from ctl.top import counters

STATS = "nic.stats"
START = "nic.start"
GAP = 2.5  # a silence this many times a NIC's usual stats interval is a gap, not a slow sample
TIERS = ("eswitch", "cache", "slow path")  # where frames were handled, fastest first
STYLES = {"eswitch": "-", "cache": "--", "slow path": ":"}


@dataclass(slots=True)
class Series:
    """One NIC's frames per second over time; NaN in `fps` (and `tiers`) marks a gap."""

    nic: str
    t: list[float]  # seconds since the first event plotted (see `origin`)
    fps: list[float]
    tiers: dict[str, list[float]] = field(default_factory=dict)  # TIERS name -> rate, per `t`


def origin(events: list[Event]) -> float:
    """Epoch seconds of the first `nic.stats` or fault event: time 0 on the plot."""
    ts = [e["t"] for e in events if e["event"] == STATS or e["event"] in FAULTS]
    return min(ts) if ts else (events[0]["t"] if events else 0.0)


def throughput(events: list[Event], t0: float | None = None) -> list[Series]:
    """Per NIC (by name), the rate of frames in between successive `nic.stats` samples."""
    t0 = origin(events) if t0 is None else t0
    by_nic: dict[str, list[Event]] = {}
    for e in events:
        if e["event"] in (STATS, START):
            by_nic.setdefault(e.get("nic") or e.get("proc", "?"), []).append(e)
    out = [_series(nic, evs, t0) for nic, evs in sorted(by_nic.items())]
    return [s for s in out if s.t]


def _counters(e: Event) -> dict[str, int]:
    c = counters(e)  # the same counters `nicteam top` reads live
    return {"frames": c["frames"], "eswitch": c["eswitch"], "cache": c["cache"],
            "slow path": c["slow"]}  # fmt: skip


def _series(nic: str, events: list[Event], t0: float) -> Series:
    samples = [e for e in events if e["event"] == STATS]
    steps = [b["t"] - a["t"] for a, b in pairwise(samples)]
    gap = GAP * statistics.median(steps) if steps else math.inf
    out = Series(nic, [], [], {k: [] for k in TIERS})
    prev: Event | None = None
    started: float | None = None  # a nic.start not yet followed by a sample
    for e in events:
        if e["event"] == START:
            started = e["t"]
            continue
        now = _counters(e)
        if started is not None:
            since, base = started, None  # its counters count from the worker's start
        elif prev is not None:
            since, base = prev["t"], _counters(prev)
        else:
            prev = e  # the first sample of a worker whose start is not in the logs: no rate yet
            continue
        if base is not None and now["frames"] < base["frames"]:
            base = None  # a decrease is a restart too: the logs may lack its nic.start
        if prev is not None and (base is None or e["t"] - prev["t"] > gap):
            # Down, paused or silent in between: break the line rather than bridge the gap
            out.t.append((prev["t"] + e["t"]) / 2 - t0)
            out.fps.append(math.nan)
            for k in TIERS:
                out.tiers[k].append(math.nan)
        prev, started = e, None
        dt = e["t"] - since
        if dt <= 0:
            continue
        rate = {
            k: (v - base[k] if base is not None and v >= base[k] else v) / dt
            for k, v in now.items()
        }
        out.t.append(e["t"] - t0)
        out.fps.append(rate["frames"])
        for k in TIERS:
            out.tiers[k].append(rate[k])
    return out


def faults(events: list[Event], t0: float | None = None) -> list[tuple[float, str]]:
    """Each `chaos.*` fault: (seconds since `origin`, label such as "kill nic1")."""
    t0 = origin(events) if t0 is None else t0
    out = []
    for e in events:
        if e["event"] in FAULTS:
            what = e.get("nic") or ",".join(e.get("nics", [])) or str(e.get("port", ""))
            out.append((e["t"] - t0, f"{FAULTS[e['event']]} {what}".strip()))
    return out


def plot(logs: Path, out: Path) -> list[Series]:
    """Draw each NIC's frames/s, and per tier below, with the faults marked; save a PNG."""
    logs, out = Path(logs), Path(out)
    events = load(logs, {STATS, START} | set(FAULTS))
    if not any(e["event"] == STATS for e in events):
        why = "no such directory" if not logs.is_dir() else "did the NICs run for a stats interval?"
        raise ValueError(f"no nic.stats events in {logs}: {why} (give RUNDIR/logs)")
    t0 = origin(events)
    series, marks = throughput(events, t0), faults(events, t0)
    if not series:
        raise ValueError(f"one nic.stats sample per NIC in {logs}: a rate needs two")

    # Imported here, not at the top: the CLI imports this module and most commands never draw.
    # Figure + FigureCanvasAgg, not pyplot: no global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    colours = {}
    for s in series:
        (line,) = top.plot(s.t, s.fps, marker=".", markersize=3, label=s.nic)
        colours[s.nic] = line.get_color()
        for k in TIERS:
            bottom.plot(s.t, s.tiers[k], color=colours[s.nic], linestyle=STYLES[k], linewidth=1)
    for ax in (top, bottom):
        for t, _ in marks:
            ax.axvline(t, color="crimson", linestyle="--", linewidth=1)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    peak = max((f for s in series for f in s.fps if not math.isnan(f)), default=0.0)
    top.set_ylim(0, max(peak, 1.0) * 1.45)  # headroom, so the fault labels clear the lines
    for t, label in marks:
        # Axes-fraction y: the label sits at the top whatever the rates are
        top.text(t, 0.98, f" {label}", transform=top.get_xaxis_transform(), rotation=90,
                 va="top", ha="right", fontsize=8, color="crimson")  # fmt: skip
    top.set_title(f"Frames in per NIC, faults dashed ({logs})")
    top.set_ylabel("frames/s")
    top.legend(loc="lower left", title="NIC")
    bottom.set_title("Per tier: eswitch hits, cache hits, slow path", fontsize=10)
    bottom.set_ylabel("frames/s")
    bottom.set_xlabel("seconds")
    tier_keys = [Line2D([], [], color="black", linestyle=STYLES[k], label=k) for k in TIERS]
    bottom.legend(handles=tier_keys, loc="lower left", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return series
