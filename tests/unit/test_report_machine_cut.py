"""A machine's network cut in the report: detected by fabricd losing its NICs, over once
fabricd reaches every one of them again after the cable is back."""

from __future__ import annotations

from pathlib import Path

from ctl.report import format_report, report
from tests.unit.test_report import at, flows, write

CUT = {"event": "chaos.machine_cut", "machine": "m3", "nics": ["nic3", "nic4"], "seconds": 2}


def test_a_cut_machine_is_detected_by_the_fabric_and_ends_when_it_reaches_it_again(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), **CUT},
        {"ts": at(3000), "event": "chaos.machine_heal", "machine": "m3"},
    ])  # fmt: skip
    write(logs, "fabricd", [
        {"ts": at(1500), "event": "fabric.nic.down", "nic": "nic1"},  # another machine's NIC
        {"ts": at(2100), "event": "fabric.nic.down", "nic": "nic3"},
        {"ts": at(2150), "event": "fabric.nic.down", "nic": "nic4"},
        {"ts": at(3300), "event": "fabric.nic.up", "nic": "nic4"},
        {"ts": at(3400), "event": "fabric.nic.up", "nic": "nic3"},
    ])  # fmt: skip
    write(logs, "h1", [flows(900, 0, 0), flows(3500, 7, 0)])
    (cut,) = report(logs)["faults"]
    assert (cut["kind"], cut["nic"], cut["healed"]) == ("machine-cut", "m3 (nic3,nic4)", True)
    assert (cut["detect_ms"], cut["window_ms"]) == (1100.0, 2400.0)
    assert [(s["ms"], s["event"], s["detail"]) for s in cut["timeline"]] == [
        (0.0, "chaos.machine_cut", "machine-cut m3 (nic3,nic4)"),
        (1100.0, "fabric.nic.down", "fabricd loses nic3"),
        (1150.0, "fabric.nic.down", "fabricd loses nic4"),
        (2000.0, "chaos.machine_heal", "cable back"),
        (2300.0, "fabric.nic.up", "fabricd reaches nic4"),
        (2400.0, "fabric.nic.up", "fabricd reaches nic3"),
    ]
    assert cut["frames_lost"] == 7
    assert "#1 machine-cut m3 (nic3,nic4): detect 1100.0 ms" in format_report(report(logs))


def test_a_cut_the_fabric_never_noticed_ends_with_the_heal(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), **CUT, "seconds": 0.5},
        {"ts": at(1500), "event": "chaos.machine_heal", "machine": "m3"},
    ])  # fmt: skip
    (cut,) = report(logs)["faults"]
    assert (cut["window_ms"], cut["detect_ms"], cut["healed"]) == (500.0, None, True)


def test_a_machine_still_unreachable_is_not_healed(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    write(logs, "ctl", [
        {"ts": at(1000), **CUT},
        {"ts": at(3000), "event": "chaos.machine_heal", "machine": "m3"},
    ])  # fmt: skip
    write(logs, "fabricd", [{"ts": at(2100), "event": "fabric.nic.down", "nic": "nic3"}])
    (cut,) = report(logs)["faults"]
    assert cut["healed"] is False
