"""Per-flow delivery of a running cluster, from the endpoints' own books.

    python -m ctl.summary [--config configs/default.toml] [--json]

Senders' books come from the hosts (VMs) and fabricd (external peers); receivers' from the same.
The same books, as hostd (`host.flows`) and fabricd (`fabric.flows`) log them every `stats_s`,
are read back by `booked`: what each process's books gained between two snapshots, never
subtracted across a restart (another `boot`, or a counter that went down), for the report.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

from configs import DEFAULT_CONFIG, FABRICD, Config, load_config
from ctl.client import ControlError, request

Books = dict[str, dict[str, Any]]  # flow name -> {"sender": stats, "sink": stats}


def books(config: Config) -> Books:
    """Every flow's books, from every host and from fabricd (the external peers)."""
    hosts = []
    for h in config.hosts:
        stats = request(config, h.name, "stats")
        for sides in stats["flows"].values():
            for book in sides.values():
                book["boot"] = stats.get("boot", 1)  # a restarted host's VMs count from 0
        hosts.append(stats["flows"])
    return merge_books(hosts, request(config, FABRICD, "stats")["peers"])


def merge_books(host_flows: list[dict[str, Any]], fabric_peers: dict[str, Any]) -> Books:
    """One flow -> sides table from hosts' `flows` and fabricd's `peers` (live or as logged)."""
    out: Books = {}
    for flows in host_flows:
        for name, sides in flows.items():
            out.setdefault(name, {}).update(sides)
    for peer in fabric_peers.values():
        for name, stats in peer.get("flows", {}).items():
            out.setdefault(name, {})["sender"] = stats
        for name, stats in peer.get("sinks", {}).items():
            out.setdefault(name, {})["sink"] = stats
    return out


def losses(table: Books) -> dict[str, tuple[int, int]]:
    """Per flow: frames lost (the sink's gaps) and connections reset (at either end)."""
    out = {}
    for name, sides in table.items():
        resets = sum(s.get("resets", 0) for s in sides.values())
        out[name] = (sides.get("sink", {}).get("gaps", 0), resets)
    return out


def deny_flows(config: Config | None) -> frozenset[str]:
    """The flows the firewall must stop (`expect = "deny"`): their resets are by design."""
    if config is None:
        return frozenset()
    return frozenset(f.name for f in config.flows if f.expect == "deny")


# -- the books as logged (`host.flows`, `fabric.flows`) ------------------------------------------

#: Sender-book field (optional): for each reset counted in `resets`, oldest first, the epoch
#: seconds (the clock of the logs' `ts`) of that connection's last progress; the latest ones only.
PROGRESS = "reset_progress_ts"
BOOKS = ("host.flows", "fabric.flows")  # the log events that carry books
TICKS = ("sent", "delivered", "connects")  # never go down while one process runs


@dataclass(frozen=True, slots=True)
class Counts:
    """One flow in one logged snapshot: what the report charges, and what tells a restart."""

    lost: int  # the sink's gaps
    resets: int  # at either end
    progress: tuple[float, ...]  # PROGRESS of the sender's latest resets, if logged
    ticks: tuple[int, ...]  # TICKS of sender then sink


def logged_books(event: dict[str, Any]) -> Books:
    """The flow -> sides table of one `host.flows` (`flows`) or `fabric.flows` (`peers`) event."""
    flows, peers = event.get("flows"), event.get("peers")
    return merge_books(
        [flows] if isinstance(flows, dict) else [], peers if isinstance(peers, dict) else {}
    )


def counts(table: Books, exclude: frozenset[str] = frozenset()) -> dict[str, Counts]:
    """Per flow (but `exclude`): frames lost, resets, their logged progress times, the ticks."""
    out = {}
    for name, (lost, resets) in losses(table).items():
        if name in exclude:
            continue
        sender, sink = table[name].get("sender", {}), table[name].get("sink", {})
        ticks = tuple(int(side.get(k) or 0) for side in (sender, sink) for k in TICKS)
        out[name] = Counts(int(lost or 0), int(resets or 0), _times(sender.get(PROGRESS)), ticks)
    return out


def _times(value: Any) -> tuple[float, ...]:
    """A logged list of times, without what is not a number (absent: none)."""
    if not isinstance(value, list):
        return ()
    return tuple(float(t) for t in value if isinstance(t, int | float))


@dataclass(frozen=True, slots=True)
class Booked:
    """What one process's books gained over one interval (a, b], per flow."""

    a: float
    b: float
    lost: dict[str, int]
    resets: dict[str, int]
    progress: dict[str, tuple[float, ...]]  # the new resets' logged last progress, if any


def booked(events: list[dict[str, Any]], exclude: frozenset[str] = frozenset()) -> list[Booked]:
    """Per process, what its books gained between consecutive snapshots (the report charges them).

    The first snapshot of a process counts from zero at its own instant (a == b); one of a new
    boot counts from zero since the previous snapshot of that process.
    """
    last: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Counts]]] = {}
    out = []
    for e in events:
        if e["event"] not in BOOKS:
            continue
        now = counts(logged_books(e), exclude)
        key = (e["event"], str(e.get("proc") or e.get("host")))
        prev = last.get(key)
        last[key] = (e, now)
        if prev is None:
            out.append(_gained(e["t"], e["t"], {}, now))
        else:
            base = {} if _new_boot(prev[0], prev[1], e, now) else prev[1]
            out.append(_gained(prev[0]["t"], e["t"], base, now))
    return out


def _new_boot(
    old_e: dict[str, Any], old: dict[str, Counts], e: dict[str, Any], now: dict[str, Counts]
) -> bool:
    """A restarted process: another `boot`, or a counter that never goes down went down."""
    if old_e.get("boot") != e.get("boot"):
        return True
    return any(_backwards(old[f], c) for f, c in now.items() if f in old)


def _backwards(old: Counts, now: Counts) -> bool:
    """A counter that only grows while the process runs is lower now."""
    return now.resets < old.resets or any(n < o for n, o in zip(now.ticks, old.ticks, strict=False))


def _gained(a: float, b: float, base: dict[str, Counts], now: dict[str, Counts]) -> Booked:
    zero = Counts(0, 0, (), ())
    lost = {f: c.lost - base.get(f, zero).lost for f, c in now.items()}
    resets = {f: c.resets - base.get(f, zero).resets for f, c in now.items()}
    resets = {f: n for f, n in resets.items() if n > 0}
    progress = {f: now[f].progress[-n:] for f, n in resets.items() if now[f].progress}
    return Booked(a, b, {f: n for f, n in lost.items() if n}, resets, progress)


COUNTS = ("sent", "delivered", "gaps", "retransmits", "resets")


def rows(config: Config, got: Books | None = None) -> list[dict[str, Any]]:
    """One row per configured flow: what was sent, delivered, lost and reset (now, or `got`)."""
    got = books(config) if got is None else got
    table = []
    for flow in config.flows:
        sender = got.get(flow.name, {}).get("sender", {})
        sink = got.get(flow.name, {}).get("sink", {})
        table.append(
            {
                "flow": flow.name,
                "proto": flow.proto,
                "expect": flow.expect,
                "sent": sender.get("sent", 0),
                "delivered": sink.get("delivered", 0),
                "gaps": sink.get("gaps", 0),
                "retransmits": sender.get("retransmits", 0),
                "resets": sender.get("resets", 0),
                "boots": (sender.get("boot", 1), sink.get("boot", 1)),
            }
        )
    return table


def window(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of what happened between two readings of the same flows.

    A flow whose books restarted in between (a host daemon's new boot) counts from 0 again:
    its new books are the window, never a difference of two boots' counters.
    """
    old = {r["flow"]: r for r in before}
    out = []
    for r in after:
        prev = old[r["flow"]]
        same = r.get("boots") == prev.get("boots")
        out.append(r | {c: r[c] - prev[c] if same else r[c] for c in COUNTS})
    return out


def main(argv: list[str] | None = None) -> int:
    """Print the table (or JSON); exit 1 if the cluster does not answer."""
    parser = argparse.ArgumentParser(prog="ctl.summary", description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--run-dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.run_dir)
    try:
        table = rows(config)
    except ControlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(table, indent=2) if args.json else format_table(table))
    return 0


def format_table(table: list[dict[str, Any]]) -> str:
    """The rows as an aligned text table."""
    cols = ["flow", "proto", "expect", "sent", "delivered", "gaps", "retransmits", "resets"]
    lines = ["  ".join(f"{c:>11}" if i else f"{c:<18}" for i, c in enumerate(cols))]
    for r in table:
        lines.append(
            "  ".join(f"{r[c]!s:>11}" if i else f"{r[c]!s:<18}" for i, c in enumerate(cols))
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
