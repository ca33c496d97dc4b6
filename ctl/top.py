"""`nicteam top`: every NIC's rates, refreshed every second (like `top`, or `ovs-dpctl-top`).

Each refresh reads every NIC's counters and divides the difference from the last reading by
the time between them: frames/s per tier (eSwitch hits, cache hits, slow path), handovers/s,
drops/s by reason; and the gauges: conntrack size, sync lag p99, state.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from bus.nicstate import NicState
from configs import Config
from ctl.views import ask

Sample = dict[str, Any]  # NIC -> its `stats`, or None when it does not answer


def sample(config: Config) -> tuple[float, Sample]:
    """Every NIC's counters now (a NIC that does not answer is None), and when."""
    return time.monotonic(), {
        n.name: ask(config, n.name, "stats", timeout=0.5) for n in config.nics
    }


def _rate(new: int, old: int, dt: float) -> float:
    # A counter that went down belongs to a rebooted worker: it counted from zero.
    return round((new - old if new >= old else new) / dt, 1) if dt > 0 else 0.0


def counters(s: dict[str, Any]) -> dict[str, int]:
    """The cumulative counters a rate is made of, from a NIC's `stats` (or its `nic.stats` log)."""
    tiers = s.get("tiers") or {}
    return {
        "frames": s.get("frames_in", 0),
        "eswitch": tiers.get("eswitch", {}).get("hits", 0),
        "cache": tiers.get("cache", {}).get("hits", 0),
        "slow": s.get("slow_path", 0),
        "handover": sum(s.get("handover_sent", {}).values()),
    }


def rates(before: Sample, after: Sample, dt: float) -> list[dict[str, Any]]:
    """One row per NIC: rates between two samples and the gauges of the second."""
    rows = []
    for nic, s in after.items():
        if s is None:
            rows.append({"nic": nic, "state": NicState.DOWN})
            continue
        old = before.get(nic) or {}
        new_c, old_c = counters(s), counters(old) if old else {}
        row: dict[str, Any] = {"nic": nic, "state": s.get("state", NicState.STARTING)}
        for key, value in new_c.items():
            row[f"{key}_per_s"] = _rate(value, old_c.get(key, value), dt)
        drops, old_drops = s.get("drops", {}), old.get("drops", {})
        row["drops_per_s"] = {
            reason: r
            for reason, n in sorted(drops.items())
            # A reason missing from an earlier sample had 0 (a Counter); with no earlier
            # sample at all (the NIC was down) there is no rate yet.
            if (r := _rate(n, old_drops.get(reason, 0 if old else n), dt))
        }
        row["conntrack"] = s.get("conntrack", 0)
        row["sync_lag_ms_p99"] = s.get("sync", {}).get("lag", {}).get("p99_ms")
        rows.append(row)
    return rows


def format_top(rows: list[dict[str, Any]], interval: float) -> str:
    """The rows as a text table (the live terminal view redraws this in place)."""
    head = (
        f"{'nic':<6} {'state':<10} {'frames/s':>9} {'eswitch/s':>9} {'cache/s':>8} "
        f"{'slow/s':>7} {'handover/s':>10} {'conntrack':>9} {'lag p99':>8}  drops/s"
    )
    lines = [f"nicteam top: every {interval:g} s", head]
    for r in rows:
        if r["state"] == NicState.DOWN:
            lines.append(f"{r['nic']:<6} {'down':<10}")
            continue
        lag = "-" if r["sync_lag_ms_p99"] is None else f"{r['sync_lag_ms_p99']:.1f}ms"
        drops = " ".join(f"{k}={v:g}" for k, v in r["drops_per_s"].items()) or "-"
        lines.append(
            f"{r['nic']:<6} {r['state']:<10} {r['frames_per_s']:>9g} {r['eswitch_per_s']:>9g} "
            f"{r['cache_per_s']:>8g} {r['slow_per_s']:>7g} {r['handover_per_s']:>10g} "
            f"{r['conntrack']:>9} {lag:>8}  {drops}"
        )
    return "\n".join(lines)


def refreshes(
    config: Config, interval: float, count: int = 0
) -> Iterator[tuple[float, list[dict[str, Any]]]]:
    """(seconds measured over, rows) every `interval`, `count` times (0: until Ctrl-C)."""
    t0, before = sample(config)
    n = 0
    with contextlib.suppress(KeyboardInterrupt):
        while not count or n < count:
            time.sleep(max(0.0, interval - (time.monotonic() - t0)))
            t1, after = sample(config)
            yield round(t1 - t0, 3), rates(before, after, t1 - t0)
            t0, before, n = t1, after, n + 1
