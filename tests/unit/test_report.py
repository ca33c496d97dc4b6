"""The failover report rebuilt from hand-written logs: windows, detection per kind, books."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctl.report import format_report, report


def at(ms: float) -> str:
    return f"2026-11-20T10:00:{ms / 1000:09.6f}Z"


def write(logs: Path, proc: str, events: list[dict[str, Any]]) -> None:
    logs.mkdir(exist_ok=True)
    with (logs / f"{proc}.jsonl").open("a") as f:
        for e in events:
            f.write(json.dumps({"proc": proc, **e}) + "\n")
        f.write("{torn line\n")  # a line cut short by a full disk is skipped


def flows(ms: float, gaps: int, resets: int) -> dict[str, Any]:
    books = {"u": {"sender": {"sent": 10}, "sink": {"gaps": gaps, "delivered": 9}},
             "t": {"sender": {"resets": resets}, "sink": {"gaps": 0}}}  # fmt: skip
    return {"ts": at(ms), "event": "host.flows", "flows": books}


def test_each_fault_gets_its_window_detection_and_books(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), "event": "chaos.kill", "nic": "nic1", "pid": 7},
        {"ts": at(5000), "event": "chaos.partition", "nics": ["nic1", "nic2"], "seconds": 1},
        {"ts": at(9000), "event": "chaos.link_down", "port": "nic2/p0"},
    ])  # fmt: skip
    write(logs, "h1", [
        flows(900, 3, 0),
        {"ts": at(1004), "event": "host.nic.down", "nic": "nic1"},
        {"ts": at(1005), "event": "host.failover", "nic": "nic1", "epoch": 2,
         "moves": [[1, "nic2"]]},
        flows(2000, 8, 1),
        {"ts": at(2500), "event": "host.failback", "nic": "nic1", "epoch": 3, "moves": []},
        flows(6000, 20, 1),
    ])  # fmt: skip
    write(logs, "nic2", [
        {"ts": at(1006), "event": "ct.commit", "nic": "nic2", "epoch": 2, "origin": "nic1",
         "records": 4},
        {"ts": at(1007), "event": "team.first_frame", "nic": "nic2", "epoch": 2, "vpid": 1,
         "way": "to_vm"},
        {"ts": at(5150), "event": "nic.peer.down", "nic": "nic2", "peer": "nic1"},
        {"ts": at(9001), "event": "team.uplink.down", "nic": "nic2", "uplink": "nic2/p0"},
    ])  # fmt: skip
    write(logs, "nic1", [
        {"ts": at(2300), "event": "sync.resync.done", "nic": "nic1", "records": 4, "ms": 12.5},
    ])  # fmt: skip
    kill, cut, cable = report(logs)["faults"]
    assert (kill["kind"], kill["nic"], kill["detect_ms"], kill["takeover_ms"]) == (
        "kill", "nic1", 4.0, 7.0)  # fmt: skip
    assert kill["resync_ms"] == 12.5
    assert (kill["frames_lost"], kill["connections_reset"]) == (5, 1)  # books at 900 -> 2000
    assert kill["lost_per_flow"] == {"u": 5}
    assert [s["event"] for s in kill["timeline"]] == [
        "chaos.kill", "host.nic.down", "host.failover", "ct.commit", "team.first_frame",
        "sync.resync.done", "host.failback"]  # fmt: skip
    assert (cut["kind"], cut["nic"], cut["detect_ms"], cut["frames_lost"]) == (
        "partition", "nic1,nic2", 150.0, 12)  # fmt: skip
    assert (cable["kind"], cable["nic"], cable["detect_ms"], cable["frames_lost"]) == (
        "link-down", "nic2/p0", 1.0, 0)  # fmt: skip
    assert "kill nic1: detect 4.0 ms, takeover 7.0 ms" in format_report(report(logs))


def test_logs_without_faults_say_so(tmp_path: Path) -> None:
    write(tmp_path / "logs", "h1", [flows(100, 0, 0)])
    assert report(tmp_path / "logs") == {"faults": []}
    assert "no faults" in format_report({"faults": []})
