"""Real kernel endpoints through the teamed NICs: configs/netns.toml's netns VMs and peer are
Linux namespaces on TAPs, and real applications (ping, curl, iperf3, a keep-alive HTTP loop)
cross the tiers, the private channel, the team and the fabric.

The oracles are the applications' own exit codes and reports and the kernel's own counters
(`nstat`), next to what the NICs say (conntrack with the kernel's real ports, eSwitch hits) and
what tshark reads in a `nicteam capture`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ctl.chaos import Chaos
from ctl.cluster import BIN, REPO, Cluster, remove_namespaces, running_cluster, tagged_pids
from ctl.report import report
from kernel import netns
from tests.cluster.conftest import wait_for
from tests.netns.netlab import can_make_namespaces

pytestmark = [pytest.mark.netns, pytest.mark.cluster]

CONFIG = REPO / "configs/netns.toml"
NSWEB, NSLOCAL, NSCLIENT, NSEXT = "10.0.10.21", "10.0.10.22", "10.0.10.23", "10.0.10.201"
RESETS = ("TcpEstabResets", "TcpExtTCPAbortOnTimeout", "TcpExtTCPAbortOnData",
          "TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnMemory", "TcpExtTCPAbortFailed")  # fmt: skip

# A request/response loop over one kept-alive HTTP/1.1 socket, at a low rate, for `seconds`:
# prints one JSON line with the requests answered and whether the socket ever failed.
LOOP = """
import http.client, json, sys, time
seconds, host = float(sys.argv[1]), sys.argv[2]
conn = http.client.HTTPConnection(host, 80, timeout=20)
done, error, sock = 0, None, None
end = time.monotonic() + seconds
try:
    while time.monotonic() < end:
        conn.request("GET", "/")
        conn.getresponse().read()
        sock = sock or conn.sock.getsockname()
        if conn.sock.getsockname() != sock:
            error = "reconnected"
            break
        done += 1
        time.sleep(0.05)
except Exception as e:
    error = repr(e)
print(json.dumps({"requests": done, "error": error, "sport": sock and sock[1]}))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    with running_cluster(config_path=CONFIG) as c:
        yield c


def run_in(
    c: Cluster, owner: str, *argv: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`argv` inside `owner`'s namespace; its exit status, output and errors."""
    ns = netns.namespace(c.tag, owner)
    return subprocess.run(netns.exec_argv(ns, argv), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def start_in(c: Cluster, owner: str, *argv: str) -> subprocess.Popen[str]:
    ns = netns.namespace(c.tag, owner)
    return subprocess.Popen(netns.exec_argv(ns, argv), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def resets(c: Cluster, owner: str) -> dict[str, int]:
    """The kernel's own connection-reset counters in `owner`'s namespace (absolute)."""
    out = run_in(c, owner, "nstat", "-az", *RESETS).stdout
    rows = [line.split() for line in out.splitlines() if line and not line.startswith("#")]
    return {row[0]: int(row[1]) for row in rows}


def ping(c: Cluster, owner: str, dst: str) -> None:
    got = run_in(c, owner, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst)
    assert got.returncode == 0, f"{owner} -> {dst}: {got.stdout}{got.stderr}"


def test_ping_on_one_nic_across_nics_and_to_the_netns_peer(cluster: Cluster) -> None:
    ping(cluster, "nslocal", NSWEB)  # both on nic1
    ping(cluster, "nsclient", NSWEB)  # nic2 -> private channel -> nic1
    ping(cluster, "nsweb", NSEXT)  # team -> fabric -> peer
    ping(cluster, "nsext", NSCLIENT)  # and back in
    got = run_in(cluster, "nsclient", "ping", "-6", "-c", "2", "-W", "2", "fd00:10::21")
    assert got.returncode == 0, got.stdout + got.stderr


def test_curl_across_nics_the_conntrack_has_its_ports_and_the_eswitch_takes_it(
    cluster: Cluster,
) -> None:
    c = cluster
    got = run_in(c, "nsclient", "curl", "-s", "-m", "5", "--local-port", "41000",
                 "-o", "/dev/null", "-w", "%{http_code}", f"http://{NSWEB}/")  # fmt: skip
    assert got.returncode == 0 and got.stdout == "200", got.stdout + got.stderr
    rows = c.control("nic2", "conntrack")["records"]
    mine = [r for r in rows if (r["src"], r["sport"], r["dst"], r["dport"])
            == (NSCLIENT, 41000, NSWEB, 80)]  # fmt: skip
    assert mine and mine[0]["proto"] == "tcp", rows
    # A longer connection: once established it is on the eSwitch, and its hits there rise.
    stream = start_in(c, "nsclient", "iperf3", "-c", NSWEB, "-t", "4", "--cport", "41001")
    try:

        def hits() -> int | None:
            flows = c.control("nic2", "flows", {"tier": "eswitch"})["flows"]
            got = [f["packets"] for f in flows
                   if f["in_port"] == "nsclient" and f["match"]["sport"] == 41001]  # fmt: skip
            return got[0] if got else None

        first = wait_for("the iperf3 stream on nic2's eSwitch", hits, timeout=10)
        wait_for("its eSwitch hits rising", lambda: (hits() or 0) > first, timeout=10)
    finally:
        stream.wait(30)
    assert stream.returncode == 0, stream.stderr.read() if stream.stderr else ""


def test_denied_ports_drop_or_reject_as_the_rule_says(cluster: Cluster) -> None:
    t0 = time.monotonic()
    dropped = run_in(cluster, "nsclient", "curl", "-s", "-m", "2", f"http://{NSWEB}:23/")
    assert dropped.returncode == 28, dropped  # the SYN vanished: curl timed out
    assert time.monotonic() - t0 >= 1.9
    refused = run_in(cluster, "nsclient", "curl", "-s", "-m", "5", f"http://{NSWEB}:8080/")
    assert refused.returncode == 7, refused  # RST: connection refused at once


def test_a_capture_of_a_netns_vm_opens_in_tshark_with_no_malformed_frame(
    cluster: Cluster, tmp_path: Path
) -> None:
    pcap = tmp_path / "nsclient.pcap"
    cap = subprocess.Popen(
        [str(BIN / "nicteam"), "--run-dir", str(cluster.run_dir), "--config", str(CONFIG),
         "capture", "nic2/nsclient", "-w", str(pcap), "--seconds", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # the tap is set up by then; what matters is what it caught
        run_in(cluster, "nsclient", "curl", "-s", "-m", "5", "-o", "/dev/null", f"http://{NSWEB}/")
        ping(cluster, "nsclient", NSWEB)
    finally:
        out, _ = cap.communicate(timeout=30)
    assert cap.returncode == 0, out
    total = _tshark(pcap, None)
    assert total > 10, f"only {total} frames captured"
    assert _tshark(pcap, "_ws.malformed || _ws.expert.severity == error") == 0
    assert _tshark(pcap, "tcp.options.mss_val && tcp.options.wscale.shift") > 0  # kernel SYNs


def _tshark(pcap: Path, display_filter: str | None) -> int:
    argv = ["tshark", "-n", "-r", str(pcap)] + (["-Y", display_filter] if display_filter else [])
    got = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    return len(got.stdout.splitlines())


# -- a real TCP stream across a NIC crash ----------------------------------------------------


def _crash(c: Cluster, how: str) -> None:
    chaos = Chaos(c.config)
    if how == "kill-nic1":
        chaos.kill("nic1")
    elif how == "kill-nic2":
        chaos.kill("nic2")
    else:
        chaos.pause("nic1", 1.0)


@pytest.mark.parametrize("how", ["kill-nic1", "kill-nic2", "pause-nic1"])
def test_a_kernel_tcp_stream_survives_a_nic_crash(how: str) -> None:
    if (why := can_make_namespaces()) is not None:
        pytest.skip(why)
    with running_cluster(config_path=CONFIG) as c:
        before = {vm: resets(c, vm) for vm in ("nsclient", "nsweb")}
        stream = start_in(c, "nsclient", "iperf3", "-c", NSWEB, "-t", "9", "-i", "1", "-J")
        loop = start_in(c, "nsclient", "python3", "-c", LOOP, "9", NSWEB)
        time.sleep(3)  # the crash lands mid-stream: this is the fault's moment, not a wait
        _crash(c, how)
        # Read while both connections are still open: at its end iperf3 closes its data socket
        # with a RST and the kernel counts it (with no fault too), which is not the crash's.
        time.sleep(7 - 3)
        after = {vm: resets(c, vm) for vm in ("nsclient", "nsweb")}
        assert stream.poll() is None and loop.poll() is None, "an application ended early"
        out, err = stream.communicate(timeout=60)
        looped, _ = loop.communicate(timeout=60)
        iperf = json.loads(out[out.index("{") :])
        _record(how, iperf, before, after, looped)
        assert stream.returncode == 0 and "error" not in iperf, err + out[-500:]
        intervals = [i["sum"] for i in iperf["intervals"]]
        assert len(intervals) >= 9 and all(s["bytes"] > 0 for s in intervals), intervals
        got = json.loads(looped)
        assert got["error"] is None and got["requests"] > 50, got
        for vm in before:
            assert after[vm] == before[vm], f"{vm}: kernel resets {before[vm]} -> {after[vm]}"
        # The report on the run's logs tells the same: the fault, taken over, nothing reset.
        rep = report(c.run_dir / "logs", c.config)
        (fault,) = rep["faults"]
        assert fault["kind"] in ("kill", "pause") and fault["takeover_ms"] is not None, fault
        assert rep["totals"]["connections_reset"] == 0, rep["totals"]


def _record(how: str, report: dict[str, Any], before: Any, after: Any, looped: str) -> None:
    """What the run measured, for the record (pytest -s)."""
    rates = [round(i["sum"]["bits_per_second"] / 1e6) for i in report.get("intervals", [])]
    print(f"{how}: iperf3 Mbit/s per second {rates}; resets before {before} after {after}; "
          f"loop {looped.strip()}")  # fmt: skip


def test_down_removes_every_namespace_even_after_the_whole_cluster_was_sigkilled(
    tmp_path: Path,
) -> None:
    if (why := can_make_namespaces()) is not None:
        pytest.skip(why)
    run = tmp_path / "run"
    nicteam = [str(BIN / "nicteam"), "--run-dir", str(run)]
    up = subprocess.run([*nicteam, "up", "--config", str(CONFIG)], capture_output=True,
                        text=True, timeout=120)  # fmt: skip
    tag = json.loads((run / "cluster.json").read_text())["tag"] if up.returncode == 0 else None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert tag is not None
        made = netns.leftovers(tag)
        assert len(made) == 4, made  # nsweb, nslocal, nsclient, nsext
        for pid in tagged_pids(tag):  # the whole cluster dies at once, services included
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for("every process of the cluster gone", lambda: not tagged_pids(tag), timeout=10)
        assert netns.leftovers(tag) == made  # namespaces outlive every process, by design
        down = subprocess.run([*nicteam, "down"], capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stdout + down.stderr
        assert netns.leftovers(tag) == []
    finally:
        if tag is not None:
            remove_namespaces(tag)
            for pid in tagged_pids(tag):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_a_kernel_client_reaches_a_built_in_vm_and_hears_back(cluster: Cluster) -> None:
    # nsclient (kernel TCP, nic2) to web1's built-in stack (nic1, port 80): the handshake
    # completes both ways and the built-in side's ACK of our data comes back.
    code = (
        "import socket; s = socket.create_connection(('10.0.10.11', 80), timeout=5); "
        "s.sendall(b'x' * 3000); s.shutdown(socket.SHUT_WR); s.settimeout(5); "
        "print(s.getsockname()[1], s.recv(1) == b'')"
    )
    got = run_in(cluster, "nsclient", "python3", "-c", code)
    assert got.returncode == 0, got.stderr
    sport, closed = got.stdout.split()
    assert closed == "True"  # web1's stack acknowledged our FIN with its own
    rows = cluster.control("nic2", "conntrack")["records"]
    assert any(r["sport"] == int(sport) and r["dst"] == "10.0.10.11" for r in rows), rows


def test_garbage_a_namespace_sends_is_counted_by_its_nic_never_fatal(cluster: Cluster) -> None:
    # Raw frames from inside nsclient, as any program with CAP_NET_RAW there may send them: an
    # IPv4 frame with no IP header, and one whose header claims more than the frame holds.
    code = (
        "import socket; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
        "s.bind(('eth0', 0)); mac = bytes.fromhex('020000000123'); "
        "s.send(b'\\xff' * 6 + mac + b'\\x08\\x00'); "
        "s.send(b'\\xff' * 6 + mac + b'\\x08\\x00' + b'\\x4f' + bytes(30))"
    )
    before = cluster.control("nic2", "stats")["drops"]
    got = run_in(cluster, "nsclient", "python3", "-c", code)
    assert got.returncode == 0, got.stderr

    def counted() -> dict[str, int] | None:
        drops = cluster.control("nic2", "stats")["drops"]
        new = {k: n - before.get(k, 0) for k, n in drops.items() if k.startswith("malformed")}
        return new if sum(new.values()) >= 2 else None

    wait_for("nic2 counting both malformed frames", counted, timeout=10)
    assert cluster.control("nic2", "stats")["state"] == "up"
    ping(cluster, "nsclient", NSWEB)  # and it goes on forwarding
