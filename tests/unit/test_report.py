"""The failover report rebuilt from hand-written logs: windows, detection per kind, books."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from configs import DEFAULT_CONFIG, load_config
from ctl.logs import event_time
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


# -- windows, charging, detection (issue: "the report cannot be trusted on a busy run") ----------


def book(
    ms: float,
    flows: dict[str, tuple[int, int]],
    *,
    boot: int | None = None,
    sent: int | None = None,
    progress: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """hostd's books at `ms`: flow -> (sink gaps, sender resets); `sent` grows with time."""
    n = int(ms // 100) if sent is None else sent
    table: dict[str, dict[str, dict[str, Any]]] = {
        name: {"sender": {"sent": n, "resets": resets}, "sink": {"gaps": gaps, "delivered": n}}
        for name, (gaps, resets) in flows.items()
    }
    for name, times in (progress or {}).items():
        table[name]["sender"]["reset_progress_ts"] = times
    e: dict[str, Any] = {"ts": at(ms), "event": "host.flows", "flows": table}
    return e if boot is None else e | {"boot": boot}


def kill(logs: Path, nic: str, ms: float, back_ms: float | None) -> None:
    """`nic` killed at `ms`: detected 4 ms later; rejoins and fails back at `back_ms`."""
    write(logs, "ctl", [{"ts": at(ms), "event": "chaos.kill", "nic": nic, "pid": 7}])
    write(logs, "h1", [{"ts": at(ms + 4), "event": "host.nic.down", "nic": nic}])
    if back_ms is not None:
        write(logs, nic, [{"ts": at(back_ms - 100), "event": "nic.rejoin", "nic": nic}])
        write(logs, "h1", [{"ts": at(back_ms), "event": "host.failback", "nic": nic,
                            "epoch": 3, "moves": []}])  # fmt: skip


def test_losses_go_to_the_window_they_fall_in_or_to_no_fault(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    kill(logs, "nic1", 1000, 2500)  # window [1 s, 2.5 s]
    kill(logs, "nic2", 5000, 6500)  # window [5 s, 6.5 s]
    write(logs, "h1", [book(ms, {"u": (gaps, 0)}) for ms, gaps in (
        (500, 0), (1500, 4), (3000, 6),  # nic1's kill: 4 + 2 (the interval meets its window)
        (4000, 13),  # 7 lost between the faults, in no window
        (5500, 16), (7500, 17),  # nic2's kill: 3 + 1
        (9000, 22),  # 5 after every window
    )])  # fmt: skip
    rep = report(logs)
    first, second = rep["faults"]
    assert (first["frames_lost"], second["frames_lost"]) == (6, 4)
    assert (first["window_ms"], second["window_ms"]) == (1500.0, 1500.0)
    assert first["healed"] and not first["overlaps"]
    assert rep["no_fault"]["frames_lost"] == 12
    assert rep["no_fault"]["lost_per_flow"] == {"u": 12}
    # Every delta goes to exactly one bucket: faults + no fault = the books' total
    assert rep["totals"]["frames_lost"] == 22 == sum(f["frames_lost"] for f in rep["faults"]) + 12
    text = format_report(rep)
    assert "#1 kill nic1: detect 4.0 ms, 6 frames lost" in text
    assert "no fault: 12 frames lost, 0 connections reset" in text


def test_a_loss_booked_just_after_the_recovery_is_the_faults(tmp_path: Path) -> None:
    # The failback at 2.5 s loses frames; the sink books them when the next message comes,
    # after a snapshot at 2.55 s: (2.55 s, 2.9 s] is past the window, inside the allowance.
    logs = tmp_path / "logs"
    kill(logs, "nic1", 1000, 2500)
    write(logs, "h1", [book(ms, {"u": (gaps, 0)}) for ms, gaps in (
        (500, 0), (2550, 3), (2900, 5), (3000, 5), (4000, 6))])  # fmt: skip
    rep = report(logs)
    assert (rep["faults"][0]["frames_lost"], rep["no_fault"]["frames_lost"]) == (5, 1)


def late_reset_run(logs: Path, progress: list[float] | None = None) -> None:
    """Kill nic1 at 1 s and nic2 at 12 s; flow t resets at ~16 s, gaps booked after reconnect."""
    kill(logs, "nic1", 1000, 2500)
    kill(logs, "nic2", 12000, 13500)
    snaps = []
    for ms in range(500, 19000, 1000):
        resets = 1 if ms >= 16500 else 0
        gaps = 30 if ms >= 17500 else 0  # messages of the reset connection, seen on reconnect
        snaps.append(book(ms, {"t": (gaps, resets)},
                          progress={"t": progress} if progress and resets else None))  # fmt: skip
    write(logs, "h1", snaps)


def test_a_late_reset_goes_to_the_fault_where_its_stall_began(tmp_path: Path) -> None:
    # The sender gave up 15 s after its last progress, just before nic1's kill: the reset is
    # booked at ~16 s, in nic2's window on today's reckoning; its lost messages come 1 s later.
    late_reset_run(tmp_path / "logs")
    rep = report(tmp_path / "logs")
    first, second = rep["faults"]
    assert (first["connections_reset"], second["connections_reset"]) == (1, 0)
    assert first["resets_per_flow"] == {"t": 1}
    assert (first["frames_lost"], second["frames_lost"]) == (30, 0)  # they follow the reset
    assert rep["no_fault"]["frames_lost"] == 0
    (reset,) = rep["resets"]
    assert reset["fault"] == 1
    assert "T10:00:01" in reset["stall_at"]  # charged where the stall began, in nic1's window


def test_a_logged_last_progress_charges_the_reset_where_it_says(tmp_path: Path) -> None:
    # With the time of last progress in the books, it decides; here the stall began at 1.5 s,
    # inside nic1's window, although give-up arithmetic alone would not point there.
    logs = tmp_path / "logs"
    kill(logs, "nic1", 1000, 2500)
    kill(logs, "nic2", 12000, 13500)
    stalled = event_time(at(1500))
    write(logs, "h1", [book(ms, {"t": (0, int(ms > 13000))},
                            progress={"t": [stalled]} if ms > 13000 else None)
                       for ms in range(500, 15000, 1000)])  # fmt: skip
    rep = report(logs)
    assert [f["connections_reset"] for f in rep["faults"]] == [1, 0]
    assert rep["resets"][0]["stall_at"].startswith("2026-11-20T10:00:01.500")


def test_a_deny_flows_resets_are_not_counted(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG, tmp_path / "run")
    logs = tmp_path / "logs"
    kill(logs, "nic1", 1000, 2500)
    peers = {"ext1": {"flows": {"ext1-web1-telnet": {"sent": 0, "resets": 1}}, "sinks": {}}}
    write(logs, "fabricd", [
        {"ts": at(500), "event": "fabric.flows", "peers": {"ext1": {"flows": {}, "sinks": {}}}},
        {"ts": at(1500), "event": "fabric.flows", "peers": peers},
    ])  # fmt: skip
    write(logs, "h1", [book(500, {"web1-app1-http": (0, 0)}),
                       book(1500, {"web1-app1-http": (2, 1)})])  # fmt: skip
    rep = report(logs, config)
    (f,) = rep["faults"]
    assert (f["connections_reset"], f["frames_lost"]) == (1, 2)
    assert f["resets_per_flow"] == {"web1-app1-http": 1}
    assert rep["totals"]["connections_reset"] == 1
    assert rep["excluded_flows"] == ["ext1-web1-telnet"]
    assert 'not counted (expect = "deny"): ext1-web1-telnet' in format_report(rep)
    assert report(logs)["faults"][0]["connections_reset"] == 2  # without a config: every flow


def test_overlapping_partitions_are_each_detected_and_marked(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), "event": "chaos.partition", "nics": ["nic1", "nic2"], "seconds": 1},
        {"ts": at(1050), "event": "chaos.partition", "nics": ["nic2", "nic3"], "seconds": 1},
    ])  # fmt: skip
    for nic, peers in (("nic1", ["nic2"]), ("nic2", ["nic1", "nic3"]), ("nic3", ["nic2"])):
        down = {p: 1200 if "nic3" in (nic, p) else 1150 for p in peers}
        up = {p: 2100 if "nic3" in (nic, p) else 2050 for p in peers}
        write(logs, nic, [{"ts": at(down[p]), "event": "nic.peer.down", "nic": nic, "peer": p}
                          for p in peers] + [{"ts": at(up[p]), "event": "nic.peer.up", "nic": nic,
                                              "peer": p} for p in peers])  # fmt: skip
    rep = report(logs)
    first, second = rep["faults"]
    assert (first["detect_ms"], second["detect_ms"]) == (150.0, 150.0)
    assert (first["overlaps"], second["overlaps"]) == ([2], [1])
    # Each heals itself after 1 s; the siblings hear each other again a little later
    assert (first["window_ms"], second["window_ms"]) == (1050.0, 1050.0)
    assert [s["event"] for s in first["timeline"]] == [
        "chaos.partition", "nic.peer.down", "nic.peer.up", "nic.peer.up"]  # fmt: skip
    text = format_report(rep)
    assert "#1 partition nic1,nic2: detect 150.0 ms" in text
    assert "#2 partition nic2,nic3: detect 150.0 ms" in text
    assert "OVERLAPS #2" in text and "OVERLAPS #1" in text


def test_a_partition_of_a_pair_already_cut_says_so(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), "event": "chaos.partition", "nics": ["nic1", "nic2"], "seconds": 2},
        {"ts": at(1500), "event": "chaos.partition", "nics": ["nic2", "nic1"], "seconds": 1},
    ])  # fmt: skip
    write(
        logs,
        "nic1",
        [
            {"ts": at(1150), "event": "nic.peer.down", "nic": "nic1", "peer": "nic2"},
            {"ts": at(3050), "event": "nic.peer.up", "nic": "nic1", "peer": "nic2"},
        ],
    )
    first, second = report(logs)["faults"]
    assert (first["detect_ms"], second["detect_ms"]) == (150.0, None)
    assert second["undetected_why"] == "already down: detected with #1, not yet healed"
    assert second["overlaps"] == [1]


def test_a_partition_healed_early_ends_there(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), "event": "chaos.partition", "nics": ["nic1", "nic2"], "seconds": 30},
        {"ts": at(1500), "event": "chaos.unpartition", "nics": ["nic1", "nic2"]},
    ])  # fmt: skip
    write(
        logs,
        "nic1",
        [
            {"ts": at(1150), "event": "nic.peer.down", "nic": "nic1", "peer": "nic2"},
            {"ts": at(1550), "event": "nic.peer.up", "nic": "nic1", "peer": "nic2"},
        ],
    )
    write(logs, "h1", [book(ms, {"u": (0, 0)}) for ms in (500, 9000)])
    (f,) = report(logs)["faults"]
    assert (f["detect_ms"], f["window_ms"]) == (150.0, 550.0)
    assert [s["event"] for s in f["timeline"]][-2:] == ["chaos.unpartition", "nic.peer.up"]


def test_a_20_ms_pause_healed_before_detection(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), "event": "chaos.pause", "nic": "nic1", "pid": 7},
        {"ts": at(1020), "event": "chaos.resume", "nic": "nic1", "pid": 7},
    ])  # fmt: skip
    write(logs, "h1", [book(500, {"u": (0, 0)}), book(3000, {"u": (0, 0)})])
    (f,) = report(logs)["faults"]
    assert (f["detect_ms"], f["window_ms"], f["healed"]) == (None, 20.0, True)
    assert f["undetected_why"] == "healed before the detection window (20 ms < 150 ms)"
    text = format_report(report(logs))
    assert "pause nic1: not detected" in text
    assert "not detected: healed before the detection window (20 ms < 150 ms)" in text


def test_a_kill_with_no_detection_and_no_recovery_says_why(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [{"ts": at(1000), "event": "chaos.kill", "nic": "nic1", "pid": 7}])
    write(logs, "h1", [book(500, {"u": (0, 0)}), book(3000, {"u": (1, 0)})])
    (f,) = report(logs)["faults"]
    assert f["undetected_why"] == "no detection event found"
    assert (f["healed"], f["window_ms"], f["frames_lost"]) == (False, 2000.0, 1)
    assert "(to the end of the logs)" in format_report(report(logs))


def test_windows_end_at_the_recovery_of_each_kind(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), "event": "chaos.pause", "nic": "nic2", "pid": 8},
        {"ts": at(2000), "event": "chaos.resume", "nic": "nic2", "pid": 8},
        {"ts": at(3000), "event": "chaos.link_down", "port": "nic1/p0"},
        {"ts": at(3500), "event": "chaos.link_up", "port": "nic1/p0"},
    ])  # fmt: skip
    write(logs, "h1", [
        {"ts": at(1150), "event": "host.nic.down", "nic": "nic2"},
        {"ts": at(2210), "event": "host.failback", "nic": "nic2", "epoch": 3, "moves": []},
    ])  # fmt: skip
    write(logs, "nic2", [
        {"ts": at(2001), "event": "nic.fenced", "nic": "nic2", "stalled_ms": 1000.0},
        {"ts": at(2010), "event": "nic.unfenced", "nic": "nic2", "epoch": 2},
        {"ts": at(2200), "event": "nic.rejoin", "nic": "nic2"},
    ])  # fmt: skip
    write(logs, "nic1", [{"ts": at(3001), "event": "team.uplink.down", "nic": "nic1",
                          "uplink": "nic1/p0"}])  # fmt: skip
    pause, cable = report(logs)["faults"]
    # Paused 1 s, declared down, fenced on resume: over when it rejoined and got its VMs back
    assert (pause["detect_ms"], pause["window_ms"]) == (150.0, 1210.0)
    assert [s["event"] for s in pause["timeline"]][-5:] == [
        "chaos.resume", "nic.fenced", "nic.unfenced", "nic.rejoin", "host.failback"]  # fmt: skip
    assert (cable["detect_ms"], cable["window_ms"], cable["overlaps"]) == (1.0, 500.0, [])
    assert cable["timeline"][-1]["event"] == "chaos.link_up"


def test_a_restart_is_never_subtracted_across(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    kill(logs, "nic1", 1000, None)  # never back: its window runs to the end of the logs
    write(logs, "h1", [
        book(500, {"u": (0, 0)}, boot=1), book(1500, {"u": (4, 0)}, boot=1),
        book(2500, {"u": (1, 0)}, boot=2),  # hostd restarted: its books count from zero
        book(3500, {"u": (3, 0)}, boot=2),
    ])  # fmt: skip
    # Old logs (no boot): a counter that went down is a restart too
    sender = {"sent": 50, "resets": 0}
    write(logs, "fabricd", [
        {"ts": at(600), "event": "fabric.flows", "peers": {"ext1": {"flows": {"e": sender},
         "sinks": {"e": {"gaps": 2, "delivered": 40}}}}},
        {"ts": at(2600), "event": "fabric.flows", "peers": {"ext1": {"flows": {"e": sender | {
         "sent": 5}}, "sinks": {"e": {"gaps": 1, "delivered": 4}}}}},
    ])  # fmt: skip
    rep = report(logs)
    (f,) = rep["faults"]
    assert f["lost_per_flow"] == {"u": 4 + 1 + 2, "e": 1}
    assert rep["no_fault"]["lost_per_flow"] == {"e": 2}  # before the kill
    assert rep["totals"]["frames_lost"] == 10


def test_host_daemon_faults_and_migrates_have_windows_and_take_their_losses(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), "event": "chaos.hostd_kill", "host": "h1", "pid": 9},
        {"ts": at(4000), "event": "chaos.migrate", "host": "h1", "vm": "app1", "nic": "nic2"},
        {"ts": at(6000), "event": "chaos.migrate", "host": "h1", "vm": "app1", "nic": "nic9"},
        {"ts": at(7000), "event": "chaos.hostd_pause", "host": "h1", "pid": 10},
        {"ts": at(9000), "event": "chaos.hostd_resume", "host": "h1", "pid": 10},
    ])  # fmt: skip
    write(logs, "h1-card", [{"ts": at(1002), "event": "host.worker.exit", "host": "h1"}])
    write(logs, "h1", [
        book(500, {"u": (0, 0)}, boot=1),
        {"ts": at(1800), "event": "host.recovered", "host": "h1", "epoch": 4},
        book(2500, {"u": (3, 0)}, boot=2),  # the new boot's first books: counted from 0
        {"ts": at(4010), "event": "host.migrate", "nic": "nic2", "epoch": 5, "moves": []},
        {"ts": at(9020), "event": "host.stalled", "host": "h1", "stalled_ms": 2000.0},
        book(9500, {"u": (3, 0)}, boot=2),
    ])  # fmt: skip
    write(logs, "nic2", [{"ts": at(4030), "event": "team.takeover", "nic": "nic2", "epoch": 5,
                          "vpids": [3], "records": 4}])  # fmt: skip
    rep = report(logs)
    kinds = [(f["kind"], f["nic"], f["window_ms"], f["detect_ms"]) for f in rep["faults"]]
    # The migrate to nic9 was refused by the host: no decision, no fault.
    assert kinds == [("hostd-kill", "h1", 800.0, 2.0), ("migrate", "app1->nic2", 30.0, 10.0),
                     ("hostd-pause", "h1", 2000.0, 2020.0)]  # fmt: skip
    assert rep["faults"][0]["frames_lost"] == 3  # the restart's losses are the kill's
