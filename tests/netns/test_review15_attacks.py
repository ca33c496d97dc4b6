"""Review of issue 15: a hostile program inside a netns VM (root in its own namespace) against
hostd and the NICs, on configs/netns.toml: it deletes its own TAP, and it floods UDP."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from ctl.cluster import REPO, Cluster, running_cluster
from kernel import netns
from tests.cluster.conftest import wait_for
from tests.netns.netlab import can_make_namespaces

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

CONFIG = REPO / "configs/netns.toml"
NSWEB = "10.0.10.21"
FLOOD_S = 4.0
# A UDP flood as fast as one Python process can send, to an allowed port (stream-udp, 5000).
FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end, data, n = time.monotonic() + float(sys.argv[2]), b"x" * 1400, 0
while time.monotonic() < end:
    try:
        s.sendto(data, (sys.argv[1], 5000)); n += 1
    except OSError:
        pass
print(n)
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    with running_cluster(config_path=CONFIG) as c:
        yield c


def run_in(c: Cluster, owner: str, *argv: str, timeout: float = 20) -> str:
    """`argv` inside `owner`'s namespace (it must succeed); its output."""
    ns = netns.namespace(c.tag, owner)
    got = subprocess.run(netns.exec_argv(ns, argv), capture_output=True, text=True,
                         timeout=timeout)  # fmt: skip
    assert got.returncode == 0, f"{owner} {argv}: {got.stdout}{got.stderr}"
    return got.stdout


def host_events(c: Cluster, event: str) -> list[dict[str, object]]:
    """hostd's log lines of `event` so far (every boot of it appends to the same file)."""
    lines = (c.run_dir / "logs" / "h1.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == event]


@pytest.mark.xfail(
    strict=False,  # timing: a much faster machine may keep up with the flood (XPASS, not a failure)
    reason="not fixed (needs ingress policing or heartbeat priority, not a local fix): hostd "
    "relays all a kernel sends, the NICs' loops fall behind their 50 ms heartbeats, hostd "
    "declares alive NICs down and fails over back and forth (epoch 1 -> 36 in 10 s seen live)",
)
def test_a_udp_flood_from_one_netns_vm_takes_no_alive_nic_down(cluster: Cluster) -> None:
    downs = len(host_events(cluster, "host.nic.down"))
    run_in(cluster, "nsclient", "python3", "-c", FLOOD, NSWEB, str(FLOOD_S), timeout=FLOOD_S + 10)
    after = host_events(cluster, "host.nic.down")[downs:]
    assert after == [], f"{len(after)} NIC-down declarations during a {FLOOD_S:g} s flood"


def test_frames_past_the_mtu_a_vm_raised_are_dropped_and_counted(cluster: Cluster) -> None:
    # Root in nsclient raises its MTU and sends jumbo UDP (no fragments) to nsweb (MTU 1500).
    send = (
        "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.setsockopt(socket.IPPROTO_IP, 10, 2); "  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
        "[s.sendto(b'x' * int(n), ('10.0.10.21', 5000)) for n in sys.argv[1:]]"
    )
    try:
        run_in(cluster, "nsclient", "ip", "link", "set", "eth0", "mtu", "16000")
        run_in(cluster, "nsclient", "python3", "-c", send, "8000", "15000")

        def dropped() -> int:
            return int(cluster.control("h1", "stats")["kernel"]["nsclient"]["dropped_oversize"])

        wait_for("hostd dropping both oversize frames", lambda: dropped() >= 2, timeout=10)
    finally:
        run_in(cluster, "nsclient", "ip", "link", "set", "eth0", "mtu", "1500")
    run_in(cluster, "nsclient", "ping", "-c", "2", "-i", "0.2", "-W", "2", NSWEB)


def test_a_vm_deleting_its_own_tap_does_not_crash_hostd(cluster: Cluster) -> None:
    # Last in the module: nslocal has no interface afterwards (until a hostd restart makes it).
    pid = (cluster.run_dir / "h1.pid").read_text()
    run_in(cluster, "nslocal", "ip", "link", "del", "eth0")
    wait_for("hostd noticing the lost TAP (or crashing on it)",
             lambda: host_events(cluster, "host.netns.lost") or host_events(cluster, "host.crash"),
             timeout=10)  # fmt: skip
    assert host_events(cluster, "host.crash") == []
    assert (cluster.run_dir / "h1.pid").read_text() == pid, "hostd was restarted"
    run_in(cluster, "nsclient", "ping", "-c", "2", "-i", "0.2", "-W", "2", NSWEB)


def test_the_netns_peer_deleting_its_own_tap_does_not_stop_the_cluster(cluster: Cluster) -> None:
    # fabricd has no card: before the fix, its crash on the dead TAP made honcho stop everything.
    run_in(cluster, "nsext", "ip", "link", "del", "eth0")
    ns = netns.namespace(cluster.tag, "nsweb")
    subprocess.run(netns.exec_argv(ns, ["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.0.10.201"]),
                   capture_output=True, timeout=10)  # fmt: skip
    assert cluster.proc.poll() is None, "the cluster stopped"
    assert cluster.control("fabricd", "stats")  # fabricd answers
    run_in(cluster, "nsweb", "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.0.10.12")  # web2
