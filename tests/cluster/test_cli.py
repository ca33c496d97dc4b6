"""The operator's read-only commands through the CLI, in a subprocess, against a real cluster."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from configs import DEFAULT_CONFIG
from tests.cluster.conftest import BIN, REPO, Cluster, tagged_pids, wait_for
from tests.cluster.test_chaos import lost_and_resets
from tests.cluster.test_cluster import delivered, wait_until_flowing
from tests.cluster.test_teaming import nicteam
from wire.addr import mac_str
from wire.frames import parse_frame_untrusted

pytestmark = pytest.mark.cluster


def test_status_map_and_conntrack_read_the_running_cluster(cluster: Cluster) -> None:
    c = cluster
    # The workload starts once the host knows its map: give it its first connections.
    wait_for(
        "connections on both NICs",
        lambda: all(c.control(n, "stats")["conntrack"] >= 1 for n in ("nic1", "nic2")),
    )
    st = json.loads(nicteam(c, "status", "--json"))
    nics = {n["name"]: n for n in st["nics"]}
    assert set(nics) == {"nic1", "nic2"}
    for n in nics.values():
        assert n["state"] == "up" and n["host_view"] == "up"
        assert n["uplinks"] == ["nic1/p0", "nic1/p1", "nic2/p0", "nic2/p1"]
        assert n["conntrack"] >= 1
    assert sorted(nics["nic1"]["vpids"] + nics["nic2"]["vpids"]) == [1, 2, 3, 4, 5]
    assert st["hosts"] == [{"name": "h1", "up": True, "epoch": 1, "team_policy": "port-id"}]

    rows = json.loads(nicteam(c, "map", "--json"))
    assert [(r["vm"], r["nic"], r["epoch"]) for r in rows][:2] == [("web1", "nic1", 1),
                                                                   ("web2", "nic2", 1)]  # fmt: skip
    text = nicteam(c, "map")
    assert "web1" in text and "02:00:00:00:01:11" in text

    ct = json.loads(nicteam(c, "conntrack", "nic1", "--json"))
    assert ct["total"] == len(ct["records"]) >= 1
    ssh = [r for r in ct["records"] if r["proto"] == "tcp" and r["dport"] == 22]
    assert ssh and ssh[0]["rule"] == "ssh-inspect" and ssh[0]["tier"] == "slow"
    assert not ssh[0]["sw_ok"] and not ssh[0]["hw_ok"]  # inspected: never offloaded
    assert "dport=22" in nicteam(c, "conntrack", "nic1")


def test_user_mistakes_are_one_line_errors_not_tracebacks(cluster: Cluster) -> None:
    env = {"NICTEAM_RUN_DIR": str(cluster.run_dir), "PATH": str(BIN)}
    for args in (["conntrack", "nic9"], ["kill", "nic9"], ["partition", "nic1", "nic1"]):
        done = subprocess.run([str(BIN / "nicteam"), "--config", str(cluster.config_path), *args],
                              cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip
        assert done.returncode != 0, args
        assert "Traceback" not in done.stderr and done.stderr.startswith("Error: "), done.stderr


def run(*args: str, run_dir: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The CLI with only a run directory: what an operator types after `nicteam up`."""
    env = {"NICTEAM_RUN_DIR": str(run_dir), "PATH": f"{BIN}:/usr/bin:/bin"}
    done = subprocess.run([str(BIN / "nicteam"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    if check:
        assert done.returncode == 0, f"nicteam {' '.join(args)}: {done.stdout}{done.stderr}"
    return done


def read_pcap(path: Path) -> tuple[int, list[bytes]]:
    """(link type, frames) of a classic pcap file, read back independently of ctl.pcap."""
    data = path.read_bytes()
    magic, major, minor, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert (magic, major, minor) == (0xA1B2C3D4, 2, 4)
    frames, off = [], 24
    while off < len(data):
        _, usec, incl, orig = struct.unpack_from("<IIII", data, off)
        assert usec < 1_000_000 and incl <= orig
        frames.append(data[off + 16 : off + 16 + incl])
        off += 16 + incl
    assert off == len(data)
    return linktype, frames


def test_flows_top_trace_and_capture_read_the_running_cluster(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    wait_until_flowing(c)

    def eswitch_flows() -> list[dict[str, object]]:
        return json.loads(nicteam(c, "flows", "nic1", "--tier", "eswitch", "--json"))["flows"]

    wait_for("eSwitch entries on nic1", eswitch_flows)
    flows = json.loads(nicteam(c, "flows", "nic1", "--json"))["flows"]
    tiers = {f["tier"] for f in flows}
    assert "eswitch" in tiers and "slow" in tiers
    ssh = [f for f in flows if f["tier"] == "slow" and f["match"]["dport"] == 22]
    assert ssh and ssh[0]["rule"] == "ssh-inspect" and ssh[0]["why"] == "rule inspects every packet"
    fast = [f for f in flows if f["tier"] == "eswitch"]
    assert all(f["actions"] and f["in_port"] for f in fast)
    slow_only = json.loads(nicteam(c, "flows", "nic1", "--tier", "slow", "--json"))["flows"]
    assert slow_only and {f["tier"] for f in slow_only} == {"slow"}
    assert "in_port(web1)" in nicteam(c, "flows", "nic1", "--tier", "eswitch")

    lines = nicteam(c, "top", "--count", "2", "--interval", "0.5", "--json").splitlines()
    assert len(lines) == 2
    for nic in json.loads(lines[-1])["nics"]:
        assert nic["state"] == "up" and nic["frames_per_s"] > 0 and nic["conntrack"] > 0
        assert nic["eswitch_per_s"] + nic["cache_per_s"] + nic["slow_per_s"] > 0
    assert "frames/s" in nicteam(c, "top", "--count", "1", "--interval", "0.2")

    pcap = tmp_path / "p0.pcap"
    nicteam(c, "capture", "nic1/p0", "-c", "20", "-w", str(pcap))
    linktype, frames = read_pcap(pcap)
    assert linktype == 1 and len(frames) == 20
    for frame in frames:  # uplink frames carry the segment's 802.1Q tag
        assert parse_frame_untrusted(frame).vlan in (10, 20)
    shown = subprocess.run(["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert len(shown.stdout.splitlines()) == 20

    web1 = c.config.vm("web1").interfaces[0].mac
    text = nicteam(c, "capture", "nic1/web1", "-c", "10").splitlines()
    assert len(text) == 10 and all(mac_str(web1) in line for line in text)
    assert c.control("nic1", "stats")["state"] == "up"  # the taps are gone, the NIC forwards

    syn = json.loads(nicteam(c, "trace", "nic1", "--in", "web1", "--json",
                             "tcp dst=10.0.10.13 sport=40000 dport=80 flags=S"))  # fmt: skip
    assert (syn["verdict"], syn["tier"], syn["rule"]) == ("forward", "slow", "from-vm-all")
    assert [(r["status"], r["zone"], r["state"]) for r in syn["records"]] == [
        ("new", 1, "SYN_SENT"), ("new", 3, "SYN_SENT")]  # fmt: skip
    assert [(e["out"], e["name"]) for e in syn["egress"]] == [("vf", "app1/0")]
    live = [r for r in json.loads(nicteam(c, "conntrack", "nic1", "--json"))["records"]
            if r["proto"] == "tcp" and r["dport"] == 80 and r["src"] == "10.0.10.11"]  # fmt: skip
    assert live and all(r["sport"] != 40000 for r in live), "a trace creates nothing"
    spec = f"tcp dst=10.0.10.13 sport={live[0]['sport']} dport=80 flags=A"
    ack = json.loads(nicteam(c, "trace", "nic1", "--in", "web1", "--json", spec))
    assert ack["tier"] in ("eswitch", "cache") and ack["verdict"] == "forward"
    assert {r["status"] for r in ack["records"]} == {"existing"}
    telnet = nicteam(c, "trace", "nic1", "--in", "nic1/p0",
                     "tcp src=10.0.10.200 dst=10.0.10.11 sport=5555 dport=23 flags=S")  # fmt: skip
    assert "Final: drop, reason fw.drop" in telnet and "drop-telnet" in telnet

    bad = run("--config", str(c.config_path), "capture", "nic1/nope", "-c", "1",
              run_dir=c.run_dir, check=False)  # fmt: skip
    assert bad.returncode == 1 and "unknown port 'nope' on nic1: expected one of" in bad.stderr


def test_migrate_moves_a_vm_and_its_connections_carry_on(cluster: Cluster) -> None:
    c = cluster
    wait_until_flowing(c)
    before = lost_and_resets(c)
    app1 = [f.name for f in c.config.flows if "app1" in f.name and f.expect == "deliver"]
    got = json.loads(nicteam(c, "migrate", "app1", "nic2", "--json"))
    moves = [(m["vpid"], m["from"], m["to"]) for m in got["moves"]]
    assert moves == [(3, "nic1", "nic2"), (4, "nic1", "nic2")]
    assert got["epoch"] == 2 and got["taken_over"] >= 3
    tcp = {(r["src"], r["sport"]): r["packets"] for r in got["connections"] if r["proto"] == "tcp"}
    assert len(tcp) >= 2
    at_move = delivered(c)

    def carried_on() -> bool:
        now = delivered(c)
        return all(now[f] >= at_move[f] + 10 for f in app1)

    wait_for(f"{app1} to deliver through nic2", carried_on, timeout=20)
    rows = json.loads(nicteam(c, "conntrack", "nic2", "--json"))["records"]
    later = {(r["src"], r["sport"]): r["packets"] for r in rows if r["zone"] in (3, 4)}
    for key, packets in tcp.items():  # the same records, not new ones, count on nic2
        assert later[key] > packets, key
    assert c.control("nic1", "stats")["vpids"] == [1]
    after = lost_and_resets(c)
    assert after[1] == before[1], "no connection was reset"
    homes = {r["vm"]: (r["nic"], r["epoch"]) for r in json.loads(nicteam(c, "map", "--json"))}
    assert homes["app1/0"] == homes["app1/1"] == ("nic2", 2)
    nicteam(c, "verify")
    table = {r["flow"]: r for r in json.loads(nicteam(c, "summary", "--json"))}
    assert all(table[f]["delivered"] >= at_move[f] + 10 and table[f]["resets"] == 0 for f in app1)
    assert "web1-app1-http" in nicteam(c, "summary")
    again = nicteam(c, "migrate", "app1", "nic2")
    assert "already on nic2" in again


def test_up_status_down_and_up_test(tmp_path: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="nt-up-"))  # short: unix socket paths
    try:
        started = run("up", run_dir=run_dir)
        assert "cluster up" in started.stdout and "nic1 up after" in started.stderr
        state = json.loads((run_dir / "cluster.json").read_text())
        assert tagged_pids(state["tag"])
        st = json.loads(run("status", "--json", run_dir=run_dir).stdout)
        assert {n["state"] for n in st["nics"]} == {"up"}
        killed = run("kill", "nic2", "--wait", run_dir=run_dir)
        assert "nic2: back up and resynced after" in killed.stdout
        assert "wait: every NIC up" in killed.stderr  # progress, on stderr
        assert run("wait", run_dir=run_dir).stdout == "every NIC up\n"
        again = run("up", run_dir=run_dir, check=False)
        assert again.returncode == 1 and "already up" in again.stderr
        stopped = run("down", run_dir=run_dir)
        assert "stopped" in stopped.stdout and not tagged_pids(state["tag"])
        assert "no cluster running" in run("down", run_dir=run_dir).stdout
    finally:
        run("down", run_dir=run_dir, check=False)
        shutil.rmtree(run_dir, ignore_errors=True)

    ok = run("up", "--test", "--seconds", "2", run_dir=tmp_path)
    assert "every flow as expected" in ok.stdout and "test: workload" in ok.stderr
    # A flow the firewall lets through but the config says is denied: an unexpected outcome.
    text = DEFAULT_CONFIG.read_text()
    head = "[flows.web2-app1-dns]"
    assert head in text
    wrong = re.sub(re.escape(head) + ".*\n", lambda m: m[0] + 'expect = "deny"\n', text)
    config = tmp_path / "wrong.toml"
    config.write_text(wrong)
    bad = run("up", "--test", "--seconds", "2", "--config", str(config), run_dir=tmp_path,
              check=False)  # fmt: skip
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "UNEXPECTED: web2-app1-dns: denied by the firewall, yet" in bad.stdout
