"""Chaos on a real cluster under the default workload: NIC OS workers killed, paused (a hang),
cut off from their sibling, killed while they resync, and every NIC of the host lost at once.

Judged by the VM endpoints' own books: no established TCP connection is reset, data resumes on
every flow, and frames lost stay within what the flow sends while the host detects the loss
and moves its VPIDs; and by the logs, which carry the fault (`chaos.*`, written by the CLI)
and every step after it.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import pytest

from ctl.chaos import Chaos
from ctl.logs import Event, load, select
from ctl.summary import books, deny_flows, losses
from tests.cluster.conftest import Cluster, wait_for
from tests.cluster.test_teaming import count, delivered, nicteam

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

ROUNDS = 10


def events(run_dir: Path, name: str, **fields: object) -> list[Event]:
    """Every `name` event of every process's log (with these field values), oldest first."""
    return select(load(run_dir / "logs", {name}), name, 0.0, **fields)


def logged(c: Cluster, name: str, **fields: object) -> Callable[[], list[Event]]:
    """A probe for `wait_for`: the `name` events with these field values, once there are any."""
    return lambda: events(c.run_dir, name, **fields)


def rebooted(c: Cluster, nic: str, old_pid: int) -> Callable[[], bool]:
    """A probe for `wait_for`: `nic`'s worker is another process than `old_pid`, and up."""
    return lambda: c.worker_pid(nic) != old_pid and c.control(nic, "stats")["state"] == "up"


def ts(e: dict[str, object]) -> float:
    return float(e["t"])  # type: ignore[arg-type]


def resets(c: Cluster) -> dict[str, int]:
    """Resets per flow that must deliver (a denied flow's sender gives up by design)."""
    deliver = set(deliver_flows(c))
    return {name: n for name, (_, n) in losses(books(c.config)).items() if name in deliver}


def test_sigkill_each_nic_in_turn_keeps_every_connection(cluster: Cluster) -> None:
    c = cluster
    deliver = deliver_flows(c)
    rates = {f.name: f.rate for f in c.config.flows}
    base_resets = steady(c)
    start = delivered(c)
    chaos = Chaos(c.config)
    for i in range(ROUNDS):
        nic = ("nic1", "nic2")[i % 2]
        old = chaos.kill(nic)
        wait_for(f"round {i}: {nic} rebooted and back", rebooted(c, nic, old), timeout=30)
        wait_home(c, f"round {i}")
        wait_resumed(c, f"round {i}")
    assert resets(c) == base_resets, "an established connection was reset"
    end = delivered(c)
    lost = {f: count(end, f, "gaps") - count(start, f, "gaps") for f in deliver}
    # Per kill: detection (kill -> host.nic.down) and the whole outage (kill -> the first frame
    # of a moved VPID on its new path: detection + remap + commit).
    logs = load(c.run_dir / "logs")
    detect_ms, outage_s = [], 0.0
    for kill in select(logs, "chaos.kill"):
        t0 = kill["t"]
        down = select(logs, "host.nic.down", t0, nic=kill["nic"])[0]
        failover = select(logs, "host.failover", t0, nic=kill["nic"])[0]
        first = select(logs, "team.first_frame", t0, epoch=failover["epoch"])[0]
        detect_ms.append(round((down["t"] - t0) * 1000, 1))
        outage_s += first["t"] - t0
    print(f"detect_ms={sorted(detect_ms)} outage_ms={outage_s * 1000:.1f} lost={lost}")
    assert len(detect_ms) == ROUNDS
    assert max(detect_ms) <= 50, detect_ms  # a crash: the transport's disconnect, default timers
    for f in deliver:
        # What the flow sends during the outages, plus one frame in flight per kill.
        assert lost[f] <= rates[f] * outage_s + ROUNDS, (f, lost[f], outage_s)
    commits = events(c.run_dir, "ct.commit")
    assert len(commits) >= ROUNDS  # every takeover committed replicated connections


def deliver_flows(c: Cluster) -> list[str]:
    return [f.name for f in c.config.flows if f.expect == "deliver"]


def wait_resumed(c: Cluster, what: str, timeout: float = 30.0) -> None:
    """Every flow that must deliver delivers more than it had when this was called."""
    before = delivered(c)
    wait_for(
        f"{what}: data resumed on every flow",
        lambda: all(count(delivered(c), f) > count(before, f) + 3 for f in deliver_flows(c)),
        timeout=timeout,
    )


def wait_home(c: Cluster, what: str, timeout: float = 30.0) -> None:
    wait_for(
        f"{what}: VPIDs home again",
        lambda: not c.ports_away(),
        timeout=timeout,
    )


def recovered(c: Cluster, what: str, base_resets: dict[str, int]) -> None:
    """VPIDs home, data flowing on every flow, no connection reset, every copy agrees."""
    wait_home(c, what)
    wait_resumed(c, what)
    assert resets(c) == base_resets, "an established connection was reset"
    assert "state digests agree" in nicteam(c, "verify")


def steady(c: Cluster) -> dict[str, int]:
    """Wait until every flow delivers; return the resets so far (the baseline)."""
    wait_for("every flow delivering", lambda: all(count(delivered(c), f) > 5
                                                  for f in deliver_flows(c)))  # fmt: skip
    return resets(c)


def test_a_paused_nic_is_found_hung_fenced_and_resynced_before_it_rejoins(
    cluster: Cluster,
) -> None:
    c = cluster
    base = steady(c)
    stale = c.control("h1", "stats")["stale_frames"].get("nic1", 0)
    nicteam(c, "pause", "nic1", "--for", "1")  # returns after SIGCONT
    (pause,) = events(c.run_dir, "chaos.pause", nic="nic1")
    (down,) = events(c.run_dir, "host.nic.down", nic="nic1")
    detect_ms = (ts(down) - ts(pause)) * 1000
    print(f"hang detect_ms={detect_ms:.1f}")
    assert detect_ms <= 200, detect_ms  # 3 missed 50 ms heartbeats, default timers
    (failover,) = events(c.run_dir, "host.failover", nic="nic1")
    assert [nic for _, nic in failover["moves"]] == ["nic2"] * 3
    wait_for("nic1 rejoined", lambda: events(c.run_dir, "host.failback", nic="nic1"))
    (fenced,) = events(c.run_dir, "nic.fenced", nic="nic1")
    (unfenced,) = events(c.run_dir, "nic.unfenced", nic="nic1")
    (failback,) = events(c.run_dir, "host.failback", nic="nic1")
    # It woke up believing in the old map, learned the new one, resynced, and only then
    # did the host give its VPIDs back.
    assert fenced["epoch"] < failover["epoch"] <= unfenced["epoch"], (fenced, unfenced)
    resync = [e for e in events(c.run_dir, "sync.resync.done", nic="nic1") if ts(e) > ts(fenced)]
    assert resync and ts(resync[0]) <= ts(failback)
    # Frames queued for it while it was stopped were not processed for VPIDs it had lost:
    # the host got nothing from it for a port it no longer held.
    assert c.control("h1", "stats")["stale_frames"].get("nic1", 0) == stale
    recovered(c, "after the pause", base)


def test_a_partition_of_the_private_channel_splits_no_brain(cluster: Cluster) -> None:
    c = cluster
    base = steady(c)
    epoch = c.control("h1", "map")["epoch"]
    vpids = sorted(p["vpid"] for p in c.control("h1", "map")["ports"])
    nicteam(c, "partition", "nic1", "nic2", "--for", "1.5")
    for nic, other in (("nic1", "nic2"), ("nic2", "nic1")):
        loses = logged(c, "nic.peer.down", nic=nic, peer=other)
        wait_for(f"{nic} loses {other}", loses, timeout=5)
    # Cut off from each other, each NIC still owns exactly what the host's map says: only the
    # host remaps, and it still hears both.
    owned = {nic: c.control(nic, "stats")["vpids"] for nic in ("nic1", "nic2")}
    assert not set(owned["nic1"]) & set(owned["nic2"]), owned
    assert sorted(owned["nic1"] + owned["nic2"]) == vpids
    for nic, other in (("nic1", "nic2"), ("nic2", "nic1")):
        hears = logged(c, "nic.peer.up", nic=nic, peer=other)
        wait_for(f"{nic} hears {other} again", hears, timeout=5)
    assert c.control("h1", "map")["epoch"] == epoch
    assert not events(c.run_dir, "host.failover")
    recovered(c, "after the partition", base)


def test_a_nic_killed_while_it_resyncs_reboots_and_resyncs_again(cluster: Cluster) -> None:
    c = cluster
    base = steady(c)
    # Cut nic1 off from nic2 first: its rebooted worker cannot finish its resync until then.
    nicteam(c, "partition", "nic1", "nic2", "--for", "4")
    first = c.worker_pid("nic1")
    nicteam(c, "kill", "nic1")
    wait_for(
        "nic1 rebooted and resyncing",
        lambda: (
            c.worker_pid("nic1") != first and c.control("nic1", "stats")["state"] == "resyncing"
        ),
    )
    second = c.worker_pid("nic1")
    nicteam(c, "kill", "nic1")  # in the middle of its resync
    wait_for(
        "nic1 rebooted again, resynced and up",
        lambda: (
            c.worker_pid("nic1") not in (first, second)
            and c.control("nic1", "stats")["state"] == "up"
        ),
    )
    assert len(events(c.run_dir, "chaos.kill", nic="nic1")) == 2
    recovered(c, "after the kill during resync", base)


def test_every_nic_of_the_host_lost_at_once_then_back(cluster: Cluster) -> None:
    c = cluster
    steady(c)
    pids = {nic: c.worker_pid(nic) for nic in ("nic1", "nic2")}
    chaos = Chaos(c.config)
    for nic in pids:
        chaos.kill(nic)
    for nic, old in pids.items():
        wait_for(f"{nic} rebooted and up", rebooted(c, nic, old))
    wait_home(c, "after losing every NIC")
    # Both NICs lost their state: connections open before cannot pass a stateful firewall
    # without it (no mid-stream pickup), so TCP senders give up and reconnect; UDP resumes.
    wait_resumed(c, "after losing every NIC", timeout=45)
    assert c.proc.poll() is None, "the cluster stopped"
    for proc in c.config.processes:
        c.control(proc, "stats")  # every daemon answers
    assert len(events(c.run_dir, "host.nic.down")) == 2


def test_the_report_agrees_with_the_endpoints_books(cluster: Cluster) -> None:
    c = cluster
    steady(c)
    books_before = lost_and_resets(c)
    # The report's baseline is the last books logged before the first fault: wait for one.
    mark = time.time()
    wait_for("books logged", lambda: events_after(c, "host.flows", mark)
             and events_after(c, "fabric.flows", mark))  # fmt: skip
    for nic in ("nic1", "nic2"):
        old = c.worker_pid(nic)
        nicteam(c, "kill", nic)
        wait_for(f"{nic} back", rebooted(c, nic, old))
        wait_home(c, f"after killing {nic}")
        wait_resumed(c, f"after killing {nic}")
    books_after = lost_and_resets(c)
    mark = time.time()
    wait_for("books logged", lambda: events_after(c, "host.flows", mark)
             and events_after(c, "fabric.flows", mark))  # fmt: skip
    rep = json.loads(nicteam(c, "report", str(c.run_dir / "logs"), "--json"))
    faults = rep["faults"]
    assert [(f["kind"], f["nic"]) for f in faults] == [("kill", "nic1"), ("kill", "nic2")]
    for f in faults:
        assert 0 < f["detect_ms"] <= 50 and f["detect_ms"] <= f["takeover_ms"]
        assert f["resync_ms"] is not None
        steps = [s["event"] for s in f["timeline"]]
        for step in ("host.nic.down", "host.failover", "ct.commit", "team.first_frame",
                     "sync.resync.done", "nic.rejoin", "host.failback"):  # fmt: skip
            assert step in steps, (step, steps)
    # Every loss and reset is charged once: to the fault whose window holds it, or to none.
    for key, i in (("frames_lost", 0), ("connections_reset", 1)):
        charged = sum(f[key] for f in faults) + rep["no_fault"][key]
        assert charged == rep["totals"][key] == books_after[i], (key, rep["totals"])
    assert books_after[1] == books_before[1], "a connection was reset"
    assert "kill nic1: detect" in nicteam(c, "report", str(c.run_dir / "logs"))
    png = c.run_dir / "failover.png"
    nicteam(c, "report", str(c.run_dir / "logs"), "--plot", str(png))
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 300
    assert matplotlib.image.imread(png).shape[:2] == (height, width)  # it decodes


def lost_and_resets(c: Cluster) -> tuple[int, int]:
    """Frames lost (sink gaps) and resets (both ends) of every flow the firewall lets through."""
    deny = deny_flows(c.config)
    per_flow = [v for name, v in losses(books(c.config)).items() if name not in deny]
    return sum(lost for lost, _ in per_flow), sum(resets for _, resets in per_flow)


def events_after(c: Cluster, name: str, t: float) -> list[Event]:
    return [e for e in events(c.run_dir, name) if ts(e) > t]
