"""Teaming on a real cluster: each policy's spread over the uplinks, as the fabric sees it.

The fabric counts frames per (ingress port, source MAC), so which uplink a VM's frames leave
by is observed outside the NICs. Policies are changed at run time with `nicteam team-policy`
and cables pulled with `nicteam link-down`, both through the CLI in a subprocess.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from nicd.datapath.teaming import Team, TeamPolicy, Uplink
from tests.cluster.conftest import BIN, REPO, Cluster, running_cluster, wait_for

pytestmark = pytest.mark.cluster

Sources = dict[str, dict[str, int]]  # uplink label -> source MAC -> frames


def nicteam(c: Cluster, *args: str) -> str:
    """Run the CLI against the cluster; fail the test with its output if it fails."""
    env = {"NICTEAM_RUN_DIR": str(c.run_dir), "PATH": str(BIN)}
    config = ["--config", str(c.config_path)]
    done = subprocess.run(
        [str(BIN / "nicteam"), *config, *args], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"nicteam {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def uplink_sources(c: Cluster) -> Sources:
    return {p: macs for p, macs in c.control("fabricd", "sources").items() if p != "peer/ext1"}


def vm_macs(c: Cluster) -> dict[str, int]:
    """VM interface MAC -> VPID, from hostd's map."""
    return {p["mac"]: p["vpid"] for p in c.control("h1", "map")["ports"]}


def delta(after: Sources, before: Sources) -> Sources:
    out: Sources = {}
    for port, macs in after.items():
        for mac, n in macs.items():
            if n - before.get(port, {}).get(mac, 0):
                out.setdefault(port, {})[mac] = n - before.get(port, {}).get(mac, 0)
    return out


def traffic_window(c: Cluster, frames: int = 300) -> Sources:
    """Frames the VMs put on the uplinks from now until `frames` more have arrived."""
    before = uplink_sources(c)
    macs = vm_macs(c)

    def enough() -> Sources | None:
        d = delta(uplink_sources(c), before)
        total = sum(n for m in d.values() for mac, n in m.items() if mac in macs)
        return d if total >= frames else None

    return wait_for(f"{frames} frames from the VMs on the uplinks", enough, timeout=30)


def ports_of(d: Sources, mac: str) -> set[str]:
    return {port for port, macs in d.items() if macs.get(mac)}


def team_of(c: Cluster) -> list[Uplink]:
    return [
        Uplink(n.name, i + 1, n.uplink_name(port))
        for n in c.config.host("h1").nics
        for i, port in enumerate(n.uplinks)
    ]


def delivered(c: Cluster) -> dict[str, dict[str, int]]:
    """Each flow's sink books (a flow nothing has reached yet has none: use `count`)."""
    flows = c.control("h1", "stats")["flows"]
    peers = c.control("fabricd", "stats")["peers"]
    out: dict[str, dict[str, int]] = {}
    for name, sides in flows.items():
        if "sink" in sides:
            out[name] = sides["sink"]
    for peer in peers.values():
        out.update(peer["sinks"])
    return out


def count(books: dict[str, dict[str, int]], flow: str, key: str = "delivered") -> int:
    return books.get(flow, {}).get(key, 0)


def stats_hold(c: Cluster, nic: str, check: Callable[[dict[str, Any]], bool]) -> Callable[[], bool]:
    """A probe for `wait_for`: `check` holds of `nic`'s stats."""
    return lambda: check(c.control(nic, "stats"))


def wait_policy(c: Cluster, policy: str) -> None:
    for nic in ("nic1", "nic2"):
        wait_for(f"{nic} on {policy}", stats_hold(c, nic, lambda s: s["team_policy"] == policy))


def test_port_id_puts_every_flow_of_a_vpid_on_its_one_uplink(cluster: Cluster) -> None:
    d = traffic_window(cluster)
    macs = vm_macs(cluster)
    want: dict[int, str] = {}
    for nic in ("nic1", "nic2"):
        want |= {int(v): u for v, u in cluster.control(nic, "stats")["assignments"].items()}
    seen = [mac for mac in macs if ports_of(d, mac)]
    assert len(seen) >= 2, d  # web2 and app1 talk to ext1 all the time
    for mac in seen:
        assert ports_of(d, mac) == {want[macs[mac]]}, (mac, d)


SPREAD_FLOWS = "".join(
    f"""
[flows.spread-{i:02d}]
proto = "udp"
src = "{src}"
dst = "ext1"
dport = 5000
rate = 5
size = 64
"""
    for i, src in zip(range(24), itertools.cycle(["web1", "web2", "app1"]), strict=False)
)


def test_l4_hash_set_at_run_time_spreads_flows_over_every_uplink() -> None:
    text = (REPO / "configs/default.toml").read_text() + SPREAD_FLOWS
    with running_cluster(text) as c:
        assert "port-id -> l4-hash" in nicteam(c, "team-policy", "l4-hash")
        wait_policy(c, "l4-hash")
        d = traffic_window(c, frames=600)
        macs = vm_macs(c)
        per_port = {port: sum(n for mac, n in m.items() if mac in macs) for port, m in d.items()}
        assert sorted(p for p, n in per_port.items() if n) == [u.name for u in team_of(c)]
        # Unlike port-id, one VM's flows leave by several uplinks.
        assert max(len(ports_of(d, mac)) for mac in macs) >= 2, d


def test_active_backup_takes_over_when_the_active_cable_is_pulled(cluster: Cluster) -> None:
    c = cluster
    nicteam(c, "team-policy", "active-backup")
    wait_policy(c, "active-backup")
    traffic_window(c, frames=50)  # frames already in flight under port-id pass
    d = traffic_window(c)
    assert set(d) == {"nic1/p0"}, d  # only the first uplink carries traffic
    macs = vm_macs(c)
    talking = [mac for mac in macs if ports_of(d, mac)]

    books = delivered(c)
    drops_before = c.control("fabricd", "stats")["switch"]["drops"].get("port.down", 0)
    assert "carrier down" in nicteam(c, "link-down", "nic1/p0")
    # The backup announces the moved MACs: the fabric learns them on nic1/p1.
    table = lambda: {r["mac"]: r["port"] for r in c.control("fabricd", "mac-table")["rows"]}  # noqa: E731
    wait_for("MACs relearned on nic1/p1", lambda: all(table().get(m) == "nic1/p1" for m in talking))
    d = traffic_window(c)
    assert set(d) == {"nic1/p1"}, d
    for nic in ("nic1", "nic2"):
        assert c.control(nic, "stats")["links_down"] == ["nic1/p0"]
    # Delivery resumes on every flow that must deliver; frames lost are counted, and few.
    deliver = [f.name for f in c.config.flows if f.expect == "deliver"]

    def resumed() -> bool:
        now = delivered(c)
        return all(count(now, f) > count(books, f) + 5 for f in deliver)

    wait_for("delivery on every flow after the cable pull", resumed)
    now = delivered(c)
    rates = {f.name: f.rate for f in c.config.flows}
    for f in deliver:
        lost = count(now, f, "gaps") - count(books, f, "gaps")
        assert 0 <= lost <= rates[f], (f, lost)  # at most one second of the flow
    dropped = c.control("fabricd", "stats")["switch"]["drops"].get("port.down", 0)
    assert dropped >= drops_before  # counted by the fabric, never silently lost

    # Cable back: failback to the first uplink.
    assert "carrier up" in nicteam(c, "link-up", "nic1/p0")
    wait_for("MACs back on nic1/p0", lambda: all(table().get(m) == "nic1/p0" for m in talking))
    traffic_window(c, frames=50)
    assert set(traffic_window(c)) == {"nic1/p0"}


def test_inbound_frames_for_a_vpid_homed_elsewhere_are_handed_over(cluster: Cluster) -> None:
    c = cluster
    nicteam(c, "team-policy", "active-backup")
    nicteam(c, "link-down", "nic1/p0")
    nicteam(c, "link-down", "nic1/p1")
    # nic1 has no uplink left: its VMs' frames leave by nic2/p0 and come back in on it.
    for nic in ("nic1", "nic2"):
        wait_for(f"{nic} sees nic1 cut", stats_hold(c, nic, lambda s: len(s["links_down"]) == 2))
    traffic_window(c, frames=50)
    s1, s2 = c.control("nic1", "stats"), c.control("nic2", "stats")
    books = delivered(c)
    d = traffic_window(c)
    assert set(d) == {"nic2/p0"}, d
    web1 = next(m for m, v in vm_macs(c).items() if v == 1)
    assert ports_of(d, web1) == {"nic2/p0"}  # web1 lives on nic1
    t1, t2 = c.control("nic1", "stats"), c.control("nic2", "stats")

    def grew(after: dict[str, Any], before: dict[str, Any], key: str, kind: str) -> int:
        return after[key].get(kind, 0) - before[key].get(kind, 0)

    # In: nic2 takes ext1's frames for web1 off the wire and hands them to nic1 to deliver.
    assert grew(t2, s2, "handover_sent", "peer_deliver") > 0
    assert grew(t1, s1, "handover_received", "peer_deliver") > 0
    # Out: nic1 hands its VMs' frames to nic2 to transmit; nic2 runs no firewall for them.
    assert grew(t1, s1, "handover_sent", "peer_transmit") > 0
    assert grew(t2, s2, "handover_received", "peer_transmit") > 0
    wait_for(
        "ext1 -> web1 delivered through nic2",
        lambda: count(delivered(c), "ext1-web1-udp") > count(books, "ext1-web1-udp") + 20,
    )


HEAVY_FLOWS = """
[flows.heavy-web1]
proto = "udp"
src = "web1"
dst = "ext1"
dport = 5000
rate = 100
size = 500

[flows.heavy-web2]
proto = "udp"
src = "web2"
dst = "ext1"
dport = 5000
rate = 100
size = 500
"""


def colliding_pair(team: list[Uplink], a: int, b: int) -> tuple[str, str]:
    """Two uplinks such that port-id puts VPIDs a and b on the same one of them."""
    for x, y in itertools.combinations(team, 2):
        t = Team(team, TeamPolicy.PORT_ID)
        for u in team:
            t.set_live(u.name, u in (x, y))
        got = t.assignments([a, b])
        if got[a] == got[b]:
            return x.name, y.name
    raise AssertionError("no pair of uplinks puts both VPIDs on one: change the test config")


def test_load_based_moves_a_vpid_off_an_overloaded_uplink() -> None:
    text = (REPO / "configs/default.toml").read_text() + HEAVY_FLOWS
    # 1 Mbit/s uplinks, overloaded above 62.5 kB/s: one heavy flow (~54 kB/s) fits, two do not.
    text = text.replace("uplink_mbps = 10000", "uplink_mbps = 1")
    text = text.replace("load_threshold = 0.75", "load_threshold = 0.5")
    with running_cluster(text) as c:
        web = {
            vm: next(p for p in c.control("h1", "map")["ports"] if p["vm"] == vm)
            for vm in ("web1", "web2")
        }
        team = team_of(c)
        keep = colliding_pair(team, web["web1"]["vpid"], web["web2"]["vpid"])
        for u in team:
            if u.name not in keep:
                nicteam(c, "link-down", u.name)
        for nic in ("nic1", "nic2"):
            wait_for(f"{nic} team of two", stats_hold(c, nic, lambda s: len(s["team"]) == 2))
        d = traffic_window(c, frames=200)
        assert ports_of(d, web["web1"]["mac"]) == ports_of(d, web["web2"]["mac"])  # collide

        nicteam(c, "team-policy", "load-based")
        moves = lambda: sum(c.control(n, "stats")["team_moves"] for n in ("nic1", "nic2"))  # noqa: E731
        wait_for("a load-based move", lambda: moves() >= 1, timeout=20)
        traffic_window(c, frames=100)
        d = traffic_window(c, frames=600)
        p1, p2 = ports_of(d, web["web1"]["mac"]), ports_of(d, web["web2"]["mac"])
        assert len(p1) == 1 and len(p2) == 1 and p1 != p2 and p1 | p2 == set(keep), d
        assert moves() == 1  # both NICs planned the same single move: no flapping
        table = {r["mac"]: r["port"] for r in c.control("fabricd", "mac-table")["rows"]}
        assert {table[web["web1"]["mac"]], table[web["web2"]["mac"]]} == set(keep)


def test_a_lost_nic_takes_its_uplinks_out_of_the_team_until_it_reboots(cluster: Cluster) -> None:
    c = cluster
    old = c.worker_pid("nic1")
    os.kill(old, signal.SIGKILL)
    wait_for("nic2 drops nic1's uplinks", lambda: c.control("nic2", "stats")["team"] == [
        "nic2/p0", "nic2/p1"])  # fmt: skip
    # nic2's VMs now leave by nic2's own uplinks, and the fabric has relearned them there.
    own = {p["mac"] for p in c.control("h1", "map")["ports"] if p["nic"] == "nic2"}
    table = lambda: {r["mac"]: r["port"] for r in c.control("fabricd", "mac-table")["rows"]}  # noqa: E731
    wait_for(
        "nic2's MACs on nic2's uplinks",
        lambda: all(table().get(m, "").startswith("nic2/") for m in own),
    )
    wait_for("nic1 rebooted", lambda: c.worker_pid("nic1") != old)
    wait_for("nic1 back in nic2's team", lambda: len(c.control("nic2", "stats")["team"]) == 4)
    wait_for("nic1 up with the whole team", lambda: len(c.control("nic1", "stats")["team"]) == 4)
