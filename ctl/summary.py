"""Per-flow delivery of a running cluster, from the endpoints' own books.

    python -m ctl.summary [--config configs/default.toml] [--json]

Senders' books come from the hosts (VMs) and fabricd (external peers); receivers' from the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from configs import DEFAULT_CONFIG
from configs.loader import FABRICD, Config, load_config
from ctl.client import ControlError, control

Books = dict[str, dict[str, Any]]  # flow name -> {"sender": stats, "sink": stats}


def books(config: Config) -> Books:
    """Every flow's books, from every host and from fabricd (the external peers)."""
    hosts = [control(config.endpoint(h.name), "stats")["flows"] for h in config.hosts]
    return merge_books(hosts, control(config.endpoint(FABRICD), "stats")["peers"])


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
            }
        )
    return table


def window(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of what happened between two readings of the same flows."""
    old = {r["flow"]: r for r in before}
    return [r | {c: r[c] - old[r["flow"]][c] for c in COUNTS} for r in after]


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
