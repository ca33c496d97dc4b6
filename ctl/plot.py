"""`nicteam report --plot`: each NIC's throughput over a run, with the faults marked, as a PNG.

Every NIC worker logs `nic.stats` (cumulative counters since the worker started) every
`stats_s`; a rate is the difference between two samples over the time between them. A worker
that is killed starts its counters again from 0 when its card reboots it (it logs `nic.start`),
and while it is down or paused it logs nothing: that stretch is left as a break in its line
(a NaN point) rather than drawn across as if frames had flowed.

Each fault's window (injection to recovery, as the report rebuilds it) is shaded, Jepsen style:
one translucent colour per kind, labelled `#id kind target` at its start, so overlapping faults
show as overlapping shades. Each connection reset is a red cross at the time the report charges
it at (the start of the stall that ended in it), on the window it was charged to.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs import Config
from ctl.logs import Event, load
from ctl.report import NAMES, Analysis, analyse
from ctl.top import counters
from ctl.windows import FAULTS

if TYPE_CHECKING:  # matplotlib is imported only when a plot is drawn
    from matplotlib.typing import LineStyleType

STATS = "nic.stats"
START = "nic.start"
GAP = 2.5  # a silence this many times a NIC's usual stats interval is a gap, not a slow sample
TIERS = ("eswitch", "cache", "slow path")  # where frames were handled, fastest first
STYLES: dict[str, LineStyleType] = {"eswitch": "-", "cache": "--", "slow path": ":"}
SHADES = {"kill": "crimson", "pause": "darkorange", "partition": "purple", "link-down": "teal",
          "migrate": "steelblue", "hostd-pause": "olive", "hostd-kill": "saddlebrown",
          "machine-cut": "slategray"}  # fmt: skip
ALPHA = 0.15  # translucent: where two windows overlap, the shades add up


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


@dataclass(frozen=True, slots=True)
class Span:
    """One fault's window on the plot: seconds since `origin`, its label and kind."""

    start: float
    end: float
    label: str  # "#1 kill nic1"
    kind: str
    healed: bool  # False: it runs to the end of the logs


def spans(an: Analysis, t0: float) -> list[Span]:
    """Each fault's window, as the report has it, in seconds since `t0`."""
    return [Span(w.start - t0, w.end - t0, f"#{w.id} {w.kind} {w.what}", w.kind, w.healed)
            for w in an.windows]  # fmt: skip


def resets(an: Analysis, t0: float) -> list[tuple[float, int, str]]:
    """Each reset (count, flow) at the time it is charged at, in seconds since `t0`."""
    return [(r.stall - t0, r.count, r.flow) for r in an.resets]


def plot(logs: Path, out: Path, config: Config | None = None) -> list[Series]:
    """Draw each NIC's frames/s, and per tier below, with fault windows and resets; save a PNG.

    With `config`, its deny flows' resets (by design) are left out, as in the report.
    """
    logs, out = Path(logs), Path(out)
    events = load(logs, {STATS, START} | NAMES)
    if not any(e["event"] == STATS for e in events):
        why = "no such directory" if not logs.is_dir() else "did the NICs run for a stats interval?"
        raise ValueError(f"no nic.stats events in {logs}: {why} (give RUNDIR/logs)")
    t0 = origin(events)
    series = throughput(events, t0)
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
    an = analyse(events, config)
    windows = spans(an, t0)
    for ax in (top, bottom):
        _shade(ax, windows)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    peak = max((f for s in series for f in s.fps if not math.isnan(f)), default=0.0)
    top.set_ylim(0, max(peak, 1.0) * 1.45)  # headroom, so the fault labels clear the lines
    for w in windows:
        # Axes-fraction y: the label sits at the top whatever the rates are
        top.text(w.start, 0.98, f" {w.label}", transform=top.get_xaxis_transform(), rotation=90,
                 va="top", ha="right", fontsize=8, color=SHADES[w.kind])  # fmt: skip
    _mark_resets(top, resets(an, t0))
    top.set_title(f"Frames in per NIC, fault windows shaded, resets x ({logs})")
    top.set_ylabel("frames/s")
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="NIC")  # never over data
    bottom.set_title("Per tier: eswitch hits, cache hits, slow path", fontsize=10)
    bottom.set_ylabel("frames/s")
    bottom.set_xlabel("seconds")
    tier_keys = [Line2D([], [], color="black", linestyle=STYLES[k], label=k) for k in TIERS]
    bottom.legend(handles=tier_keys, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=100)
    return series


def _shade(ax: Any, windows: list[Span]) -> None:
    """Each window as a translucent band, its injection as a thin line."""
    for w in windows:
        colour = SHADES[w.kind]
        ax.axvspan(w.start, w.end, color=colour, alpha=ALPHA, linewidth=0)
        ax.axvline(w.start, color=colour, linestyle="--", linewidth=0.8)


def _mark_resets(ax: Any, marks: list[tuple[float, int, str]]) -> None:
    """Red crosses near the bottom of `ax` at each reset's charged time, counts above them."""
    if not marks:
        return
    xs = [t for t, _, _ in marks]
    axis = ax.get_xaxis_transform()  # x in data, y in axes fraction
    ax.plot(xs, [0.04] * len(xs), "x", color="red", markersize=8, mew=2, transform=axis,
            linestyle="none", label="reset")  # fmt: skip
    for t, count, _ in marks:
        if count > 1:
            ax.text(t, 0.08, str(count), transform=axis, ha="center", fontsize=8, color="red")
