"""`python -m bench.cluster --quick` on 1 and 2 hosts: its JSON has every figure, each positive.

Behaviour, not speed: the figures' values are never compared with a target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.cluster import main

pytestmark = pytest.mark.cluster


def _positive(what: str, x: Any) -> None:
    assert isinstance(x, int | float) and not isinstance(x, bool) and x > 0, f"{what}: {x!r}"


def test_quick_run_on_one_and_two_hosts_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    main(["--quick", "--sizes", "1,2", "--kills", "2", "--out", str(out)])
    r = json.loads(out.read_text())
    assert set(r["ceilings"]) == {"ipc", "tcp_curve"}
    for transport, fps in r["ceilings"].items():
        _positive(f"ceiling {transport}", fps)
    assert [s["hosts"] for s in r["sizes"]] == [1, 2]
    for s in r["sizes"]:
        _check_size(s)
    assert set(r["growth"]) >= {"launch time", "idle CPU", "frames/s per host", "takeover p99"}
    for name, ratio in r["growth"].items():
        _positive(f"growth of {name}", ratio)


def _check_size(s: dict[str, Any]) -> None:
    n = s["hosts"]
    hosts = [f"h{k}" for k in range(1, n + 1)]
    nics = [f"nic{k}" for k in range(1, 2 * n + 1)]
    assert s["nics"] == 2 * n
    _positive("processes", s["processes"])
    for what, seconds in s["launch_s"].items():
        _positive(f"{n} hosts: launch to {what}", seconds)
    assert s["launch_s"]["flows_delivering"] >= s["launch_s"]["nics_up"]
    cpu = s["idle_cpu_pct"]
    assert len(cpu) == s["processes"]
    for proc in ["fabricd", *hosts, *nics]:  # the daemons and NIC workers work all the time
        _positive(f"{n} hosts: CPU % of {proc}", cpu[proc])
    for proc in [f"{p}-card" for p in hosts + nics]:  # a card only waits on its worker
        assert cpu[proc] >= 0
    assert set(s["frames_per_s"]) == set(hosts)
    for host, fps in s["frames_per_s"].items():
        _positive(f"{n} hosts: frames/s of {host}", fps)
    t = s["takeover_ms"]
    assert t["n"] == len(t["samples"]) == s["kills"] == 2
    for what in ("p50", "p99"):
        _positive(f"{n} hosts: takeover {what}", t[what])
    assert t["p50"] <= t["p99"]
