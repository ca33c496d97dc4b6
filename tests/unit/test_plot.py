"""Throughput per NIC and fault markers from hand-written logs, and the PNG drawn from them."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from ctl.logs import load
from ctl.plot import faults, plot, throughput

NAN = math.nan


def at(ms: float) -> str:
    return f"2026-11-20T10:00:{ms / 1000:09.6f}Z"


def write(logs: Path, proc: str, events: list[dict[str, Any]]) -> None:
    logs.mkdir(exist_ok=True)
    nic = {} if proc == "ctl" else {"nic": proc}  # as bus.log binds it: a NIC's own, not the CLI's
    with (logs / f"{proc}.jsonl").open("a") as f:
        for e in events:
            f.write(json.dumps({"proc": proc, **nic, **e}) + "\n")


def stats(ms: float, frames: int, eswitch: int = 0, slow: int = 0) -> dict[str, Any]:
    tiers = {"eswitch": {"hits": eswitch, "misses": 1}, "cache": {"hits": 0, "misses": 1}}
    return {"ts": at(ms), "event": "nic.stats", "frames_in": frames, "slow_path": slow,
            "tiers": tiers}  # fmt: skip


def restart_run(logs: Path) -> None:
    """nic1 killed at 3.5 s and back (no nic.start logged) by 4 s; nic2 runs on."""
    write(logs, "nic1", [
        stats(1000, 100, 60, 40), stats(2000, 600, 360, 240), stats(3000, 1100, 660, 440),
        stats(4000, 300, 200, 100),  # the counters restarted from 0
        stats(5000, 800, 500, 300),
    ])  # fmt: skip
    write(logs, "nic2", [stats(1500, 50), stats(2500, 250)])
    write(logs, "ctl", [{"ts": at(3500), "event": "chaos.kill", "nic": "nic1", "pid": 7}])


def test_a_counter_restart_gives_the_new_count_over_the_interval(tmp_path: Path) -> None:
    restart_run(tmp_path)
    nic1, nic2 = throughput(load(tmp_path))
    assert nic1.nic == "nic1"
    # Time 0 is the first sample (1 s); the restart breaks the line (NaN) between 3 s and 4 s
    assert nic1.t == pytest.approx([1.0, 2.0, 2.5, 3.0, 4.0])
    assert nic1.fps == pytest.approx([500, 500, NAN, 300, 500], nan_ok=True)
    assert nic1.tiers["eswitch"] == pytest.approx([300, 300, NAN, 200, 300], nan_ok=True)
    assert nic1.tiers["slow path"] == pytest.approx([200, 200, NAN, 100, 200], nan_ok=True)
    assert nic1.tiers["cache"] == pytest.approx([0, 0, NAN, 0, 0], nan_ok=True)
    assert all(f >= 0 for s in (nic1, nic2) for f in s.fps if not math.isnan(f))
    assert (nic2.nic, nic2.t, nic2.fps) == ("nic2", pytest.approx([1.5]), pytest.approx([200]))


def test_a_reboot_counts_from_nic_start_and_a_silence_breaks_the_line(tmp_path: Path) -> None:
    write(tmp_path, "nic1", [
        {"ts": at(500), "event": "nic.start"},
        stats(1000, 100), stats(2000, 600),
        {"ts": at(5000), "event": "nic.start"},  # killed after 2 s, rebooted at 5 s
        stats(5500, 650),  # above the old count, yet a new worker's: 650 in 0.5 s
        stats(6500, 1150),
    ])  # fmt: skip
    write(tmp_path, "nic2", [  # paused from 3 s to 7 s: no samples, the counter goes on
        stats(1000, 100), stats(2000, 600), stats(3000, 1100), stats(7000, 1500),
        stats(8000, 2000),
    ])  # fmt: skip
    nic1, nic2 = throughput(load(tmp_path))
    assert nic1.t == pytest.approx([0.0, 1.0, 2.75, 4.5, 5.5])
    assert nic1.fps == pytest.approx([200, 500, NAN, 1300, 500], nan_ok=True)
    assert nic2.t == pytest.approx([1.0, 2.0, 4.0, 6.0, 7.0])
    assert nic2.fps == pytest.approx([500, 500, NAN, 100, 500], nan_ok=True)


def test_faults_are_marked_at_their_time_since_the_first_event(tmp_path: Path) -> None:
    write(tmp_path, "ctl", [
        {"ts": at(500), "event": "chaos.kill", "nic": "nic1", "pid": 7},
        {"ts": at(2000), "event": "chaos.pause", "nic": "nic2", "pid": 8},
        {"ts": at(3000), "event": "chaos.partition", "nics": ["nic1", "nic2"], "seconds": 1},
        {"ts": at(4250), "event": "chaos.link_down", "port": "nic1/p0"},
        {"ts": at(4300), "event": "chaos.resume", "nic": "nic2", "pid": 8},  # not a fault
    ])  # fmt: skip
    write(tmp_path, "nic2", [stats(1000, 0), stats(2000, 300)])
    events = load(tmp_path)
    assert faults(events) == [
        (0.0, "kill nic1"),
        (pytest.approx(1.5), "pause nic2"),
        (pytest.approx(2.5), "partition nic1,nic2"),
        (pytest.approx(3.75), "link-down nic1/p0"),
    ]
    # The same origin (the kill, the first event) for the throughput
    assert throughput(events)[0].t == pytest.approx([1.5])


def test_plot_writes_a_png_that_decodes(tmp_path: Path) -> None:
    from matplotlib.image import imread

    restart_run(tmp_path / "logs")
    out = tmp_path / "plots" / "throughput.png"
    series = plot(tmp_path / "logs", out)
    assert [s.nic for s in series] == ["nic1", "nic2"]
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert (length, kind) == (13, b"IHDR")
    assert width > 0 and height > 0
    pixels = imread(out)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0  # something was drawn, not a blank canvas


def test_logs_without_nic_stats_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "ctl", [{"ts": at(500), "event": "chaos.kill", "nic": "nic1", "pid": 7}])
    with pytest.raises(ValueError, match=r"no nic\.stats events in .*: did the NICs run"):
        plot(tmp_path, tmp_path / "out.png")
    with pytest.raises(ValueError, match=r"no nic\.stats events in .*: no such directory"):
        plot(tmp_path / "missing", tmp_path / "out.png")
    write(tmp_path, "nic1", [stats(1000, 100)])  # one sample: no rate yet
    with pytest.raises(ValueError, match="a rate needs two"):
        plot(tmp_path, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def shaded_run(logs: Path) -> None:
    """nic1 killed at 3.5 s, back at 4.5 s; a 1 s partition at 4 s; flow t reset at 4.2 s."""
    restart_run(logs)
    write(logs, "ctl", [
        {"ts": at(4000), "event": "chaos.partition", "nics": ["nic1", "nic2"], "seconds": 1},
    ])  # fmt: skip
    write(logs, "h1", [
        {"ts": at(4400), "event": "nic.rejoin", "nic": "nic1"},
        {"ts": at(4500), "event": "host.failback", "nic": "nic1", "epoch": 3, "moves": []},
        {"ts": at(3000), "event": "host.flows", "flows": {"t": {"sender": {"resets": 0}}}},
        {"ts": at(5000), "event": "host.flows", "flows": {"t": {"sender": {"resets": 2}}}},
    ])  # fmt: skip


def test_fault_windows_and_resets_as_the_report_charges_them(tmp_path: Path) -> None:
    from ctl.plot import origin, resets, spans
    from ctl.report import analyse

    shaded_run(tmp_path)
    events = load(tmp_path)
    an, t0 = analyse(events), origin(events)  # time 0: the first nic.stats sample, at 1 s
    kill, cut = spans(an, t0)
    assert (kill.start, kill.end, kill.label, kill.healed) == (
        pytest.approx(2.5), pytest.approx(3.5), "#1 kill nic1", True)  # fmt: skip
    assert (cut.start, cut.end, cut.label) == (pytest.approx(3.0), pytest.approx(4.0),
                                               "#2 partition nic1,nic2")  # fmt: skip
    # Booked in (3 s, 5 s]: both faults began inside and overlap it as much; the first wins
    ((t, count, flow),) = resets(an, t0)
    assert (t, count, flow) == (pytest.approx(3.0), 2, "t")


def test_plot_shades_windows_and_marks_resets(tmp_path: Path) -> None:
    from matplotlib.image import imread

    shaded_run(tmp_path / "logs")
    out = tmp_path / "shaded.png"
    plot(tmp_path / "logs", out)
    pixels = imread(out)
    # Pure red (the reset crosses) is drawn somewhere; no line or shade is that colour
    red = (pixels[..., 0] > 0.9) & (pixels[..., 1] < 0.1) & (pixels[..., 2] < 0.1)
    assert red.any()


def test_every_fault_kind_has_a_shade() -> None:
    from ctl.plot import SHADES
    from ctl.windows import FAULTS

    assert set(FAULTS.values()) <= set(SHADES)
