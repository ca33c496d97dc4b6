"""Every flow's counters over time, summed over its endpoints' books, as a run's logs tell them.

The endpoints' books are cumulative: hostd logs its VMs' (`host.flows`, with its boot), fabricd
its external peers' (`fabric.flows`), and the nemesis the live ones it reads (`books`). A
`BookSeries` turns them into one forward-moving total per flow, never subtracting across an
endpoint's restart.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

from ctl.logs import Event

COUNTERS = ("sent", "delivered", "gaps", "resets", "connects", "retransmits")


def _samples(e: Event) -> Iterator[tuple[str, Any, str, str, dict[str, Any]]]:
    """(source, its boot, flow, side, stats) of every book in an event: logged (`host.flows`,
    `fabric.flows`) or read by the nemesis (`books`, with the hosts' `boots`)."""
    if e["event"] == "host.flows":
        hosts, peers = {str(e.get("proc")): e.get("flows", {})}, {}
        boots = {str(e.get("proc")): e.get("boot")}
    elif e["event"] == "fabric.flows":
        hosts, peers, boots = {}, e.get("peers", {}), {}
    elif isinstance(e.get("books"), dict):
        hosts, peers = e["books"].get("hosts", {}), e["books"].get("peers", {})
        boots = e["books"].get("boots", {})
    else:
        return
    for host, flows in hosts.items():
        for flow, sides in flows.items():
            for side, stats in sides.items():
                yield f"host:{host}", boots.get(host), flow, side, stats
    for peer, books in peers.items():
        for flow, stats in books.get("flows", {}).items():
            yield f"peer:{peer}", None, flow, "sender", stats
        for flow, stats in books.get("sinks", {}).items():
            yield f"peer:{peer}", None, flow, "sink", stats


class BookSeries:
    """Every flow's counters over time, summed over its endpoints' books.

    An endpoint that restarted with its daemon (another `boot`, or a counter that only grows
    went down) starts its books from zero: what it had counted is carried over, so the series
    only moves forward (gaps excepted: a late arrival fills one).
    """

    def __init__(self, events: Iterable[Event]) -> None:
        self.times: list[float] = []
        self.totals: list[dict[str, dict[str, float]]] = []
        last: dict[tuple[str, str, str], tuple[Any, dict[str, Any]]] = {}
        carried: dict[tuple[str, str, str], dict[str, float]] = {}
        current: dict[tuple[str, str, str], dict[str, float]] = {}
        for e in events:
            samples = list(_samples(e))
            for source, boot, flow, side, stats in samples:
                key = (source, flow, side)
                carry = carried.setdefault(key, dict.fromkeys(COUNTERS, 0))
                if key in last and _restarted(*last[key], boot, stats, side):
                    for c in COUNTERS:
                        carry[c] += last[key][1].get(c, 0)
                    # A new sink counts every sequence number sent before it existed as a gap:
                    # its first gaps are its baseline, not frames lost.
                    carry["gaps"] -= stats.get("gaps", 0) if side == "sink" else 0
                last[key] = (boot if boot is not None else last.get(key, (None,))[0], stats)
                now = {c: stats.get(c, 0) + carry[c] for c in COUNTERS}
                stall = stats.get("max_silence_ms") or 0.0
                now["stall_ms"] = max(stall, current.get(key, {}).get("stall_ms", 0.0))
                current[key] = now
            if samples:
                self.times.append(e["t"])
                self.totals.append(_sum(current))

    def at(self, t: float) -> dict[str, dict[str, float]]:
        """Every flow's totals as of the last books at or before `t` (empty before any)."""
        i = bisect.bisect_right(self.times, t) - 1
        return self.totals[i] if i >= 0 else {}

    def steps(
        self, after: float, before: float
    ) -> Iterator[tuple[float, dict[str, dict[str, float]], dict[str, dict[str, float]]]]:
        """(time, totals before, totals then) of every book reading in (after, before]."""
        for i in range(1, len(self.times)):
            if after < self.times[i] <= before:
                yield self.times[i], self.totals[i - 1], self.totals[i]


def _restarted(boot0: Any, old: dict[str, Any], boot: Any, now: dict[str, Any], side: str) -> bool:
    """Another boot of the endpoint's daemon, or its first-transmission count went down."""
    if boot is not None and boot0 is not None and boot != boot0:
        return True
    lead = "sent" if side == "sender" else "delivered"
    return bool(now.get(lead, 0) < old.get(lead, 0))


def _sum(current: dict[tuple[str, str, str], dict[str, float]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (_, flow, side), now in current.items():
        row = out.setdefault(flow, dict.fromkeys((*COUNTERS, "stall_ms"), 0.0))
        for c in COUNTERS:
            row[c] += now[c]
        if side == "sink":
            row["stall_ms"] = max(row["stall_ms"], now["stall_ms"])
    return out
