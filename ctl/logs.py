"""Every process's JSON log of a run, merged into one timeline.

Each daemon (and the CLI, for `chaos.*` faults) writes `<run_dir>/logs/<proc>.jsonl`, one event
per line with a UTC `ts`. `load` reads them all, skips lines that are not JSON events (a line
torn by a full disk), and sorts by time; each event gains `t`, its time in epoch seconds.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

Event = dict[str, Any]


def event_time(ts: str) -> float:
    """Epoch seconds of a log line's `ts` (ISO 8601, UTC)."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def load(logs: Path, names: set[str] | None = None) -> list[Event]:
    """The events of every `*.jsonl` under `logs` (only `names`, if given), oldest first."""
    out: list[Event] = []
    for path in sorted(Path(logs).glob("*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            if names is not None and not any(f'"{n}"' in line for n in names):
                continue  # most lines are not wanted: skip them before parsing
            try:
                e = json.loads(line)
                if names is not None and e["event"] not in names:
                    continue
                e["t"] = event_time(e["ts"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            out.append(e)
    out.sort(key=lambda e: e["t"])
    return out


def select(events: list[Event], name: str, after: float = 0.0, **fields: Any) -> list[Event]:
    """The `name` events at or after `after` whose fields have these values."""
    return [
        e
        for e in events
        if e["event"] == name and e["t"] >= after and all(e.get(k) == v for k, v in fields.items())
    ]
