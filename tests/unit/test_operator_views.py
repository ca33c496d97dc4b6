"""What the operator reads: pcap files, `top` rates, `up --test` verdicts, dump-flows rows.

ctl/pcap.py, ctl/top.py, ctl/session.py `judge`, ctl/summary.py `window` and nicd/inspect.py
`flow_rows` / `port_name`, each fed hand-made inputs (real frames, stats shaped like the NIC
worker's `stats` reply, endpoint books, a test pipeline). Only the tcpdump check runs a process.
"""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from datetime import datetime
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import Any

import pytest

from configs import DEFAULT_CONFIG, Config, load_config
from ctl.pcap import PcapWriter, summary
from ctl.session import judge
from ctl.summary import rows, window
from ctl.top import counters, format_top, rates
from nicd.datapath.pipeline import Pipeline, PortKind
from nicd.inspect import flow_rows, port_name
from tests.unit.dpfixtures import (
    SEGMENTS,
    VM,
    interfaces,
    make_pipeline,
    tcp_in,
    tcp_out,
    vm,
)
from wire import build
from wire.addr import mac_bytes
from wire.protocols import TCP_ACK, TCP_PSH, TCP_SYN

A, B = mac_bytes("02:00:00:00:00:01"), mac_bytes("02:00:00:00:00:02")
TCP4 = build.tcp_frame(
    A, B, ip_address("10.0.0.1"), ip_address("10.0.0.2"), 1000, 80, TCP_SYN, payload=b"hello"
)
UDP6 = build.udp_frame(
    A, B, ip_address("fd00::1"), ip_address("fd00::2"), 53, 5353, b"q", vlan=10
)  # fmt: skip
ARP = build.arp_frame(1, A, IPv4Address("10.0.0.1"), b"\0" * 6, IPv4Address("10.0.0.2"))
ARP_REPLY = build.arp_frame(2, B, IPv4Address("10.0.0.2"), A, IPv4Address("10.0.0.1"), dst_mac=A)


# -- ctl/pcap.py ---------------------------------------------------------------------------------


def parse_pcap(data: bytes) -> tuple[tuple[int, ...], list[tuple[int, int, int, int, bytes]]]:
    """The global header's fields and every record (ts_sec, ts_usec, incl, orig, bytes)."""
    header = struct.unpack_from("=IHHiIII", data, 0)
    records, off = [], 24
    while off < len(data):
        sec, usec, incl, orig = struct.unpack_from("=IIII", data, off)
        off += 16
        records.append((sec, usec, incl, orig, data[off : off + incl]))
        off += incl
    assert off == len(data)
    return header, records


def test_pcap_global_header() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, snaplen=96)
    data = buf.getvalue()
    assert len(data) == 24
    assert data[:4] == struct.pack("=I", 0xA1B2C3D4)  # native order: readers swap
    header, records = parse_pcap(data)
    # magic, version 2.4, thiszone, sigfigs, snaplen, linktype Ethernet
    assert header == (0xA1B2C3D4, 2, 4, 0, 0, 96, 1)
    assert records == [] and w.frames == 0
    default = io.BytesIO()
    PcapWriter(default)
    assert parse_pcap(default.getvalue())[0][5] == 65535


def test_pcap_records_carry_microsecond_times_lengths_and_frames() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf)
    w.write(1_700_000_000.123456, TCP4)
    w.write(1_700_000_001.5, UDP6[:40], orig_len=len(UDP6))  # cut to a snap length
    w.write(2.9999999, ARP)  # would round to 1_000_000 us: stays inside its second
    w.write(7, ARP_REPLY)
    assert w.frames == 4
    _, records = parse_pcap(buf.getvalue())
    assert records == [
        (1_700_000_000, 123456, len(TCP4), len(TCP4), TCP4),
        (1_700_000_001, 500000, 40, len(UDP6), UDP6[:40]),
        (2, 999999, len(ARP), len(ARP), ARP),
        (7, 0, len(ARP_REPLY), len(ARP_REPLY), ARP_REPLY),
    ]
    assert records[1][2] < records[1][3]  # incl < orig when cut
    assert (len(TCP4), len(UDP6)) == (59, 67)


def test_tcpdump_reads_what_we_write(tmp_path: Path) -> None:
    # No skip: the Makefile installs tcpdump, and `nicteam capture` files are for it.
    tcpdump = shutil.which("tcpdump") or (
        "/usr/bin/tcpdump" if Path("/usr/bin/tcpdump").exists() else None
    )
    assert tcpdump is not None, "tcpdump is not installed (`make` installs it)"
    path = tmp_path / "cap.pcap"
    with path.open("wb") as f:
        w = PcapWriter(f)
        w.write(10.25, TCP4)
        w.write(11.5, UDP6)
        w.write(12.0, ARP)
        w.write(13.0, TCP4[:54], orig_len=len(TCP4))  # headers kept, payload cut
    out = subprocess.run(
        [tcpdump, "-nn", "-r", str(path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stdout
    assert "10.0.0.1.1000 > 10.0.0.2.80" in lines[0]
    assert "fd00::1.53 > fd00::2.5353" in lines[1]
    assert "ARP, Request who-has 10.0.0.2 tell 10.0.0.1" in lines[2]
    assert "10.0.0.1.1000 > 10.0.0.2.80" in lines[3]


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S.%f")


def test_summary_of_tcp_and_udp_names_macs_ips_ports_and_proto() -> None:
    assert summary(100.25, "in", TCP4) == (
        f"{when(100.25)} in  02:00:00:00:00:01 > 02:00:00:00:00:02, "
        "10.0.0.1.1000 > 10.0.0.2.80: tcp, length 59"
    )
    assert summary(100.5, "out", UDP6) == (
        f"{when(100.5)} out 02:00:00:00:00:01 > 02:00:00:00:00:02, vlan 10, "
        "fd00::1.53 > fd00::2.5353: udp, length 67"
    )


def test_summary_of_arp() -> None:
    assert summary(1.0, "in", ARP) == (
        f"{when(1.0)} in  02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ARP request 10.0.0.2 from 10.0.0.1"
    )
    assert summary(1.0, "out", ARP_REPLY) == (
        f"{when(1.0)} out 02:00:00:00:00:02 > 02:00:00:00:00:01, ARP reply 10.0.0.1 from 10.0.0.2"
    )


def test_summary_of_a_truncated_frame_says_malformed_without_raising() -> None:
    assert summary(1.0, "in", TCP4[:30]) == f"{when(1.0)} in  malformed (ipv4.short), length 30"
    assert summary(1.0, "in", b"\x01" * 5) == f"{when(1.0)} in  malformed (eth.short), length 5"
    for frame in (TCP4, UDP6, ARP):
        for n in range(len(frame)):
            line = summary(1.0, "in", frame[:n])
            assert "malformed" in line, (n, line)
            assert line.endswith(f"length {n}")


# -- ctl/top.py ----------------------------------------------------------------------------------


def nic_stats(
    frames: int,
    eswitch: int,
    cache: int,
    slow: int,
    handover: dict[str, int] | None = None,
    drops: dict[str, int] | None = None,
    conntrack: int = 0,
    p99: float | None = None,
    state: str = "up",
) -> dict[str, Any]:
    """A NIC worker's `stats` reply, reduced to what `top` reads (nicd/worker.py `stats`)."""
    lag: dict[str, Any] = {"samples": 0} if p99 is None else {"samples": 10, "p99_ms": p99}
    return {
        "nic": "nicX",
        "state": state,
        "frames_in": frames,
        "forwarded": frames,
        "slow_path": slow,
        "drops": drops or {},
        "conntrack": conntrack,
        "tiers": {
            "eswitch": {"hits": eswitch, "misses": 0, "installs": 0, "entries": 1},
            "cache": {"hits": cache, "misses": 0, "installs": 0, "entries": 1},
        },
        "handover_sent": handover or {},
        "sync": {"seq": 1, "lag": lag, "peers": {}},
    }


BEFORE = nic_stats(
    100, 50, 40, 10, {"peer_deliver": 5, "peer_transmit": 1}, {"acl.deny": 4, "eth.short": 2}
)
AFTER = nic_stats(
    400,
    200,
    160,
    40,
    {"peer_deliver": 17, "peer_transmit": 4},
    {"acl.deny": 10, "eth.short": 2},
    conntrack=12,
    p99=3.5,
)


def testcounters_read_the_stats_shape() -> None:
    assert counters(AFTER) == {
        "frames": 400, "eswitch": 200, "cache": 160, "slow": 40, "handover": 21,
    }  # fmt: skip
    waiting = {"state": "waiting-for-policy", "frames_in": 0, "slow_path": 0, "tiers": {}}
    assert counters(waiting) == {"frames": 0, "eswitch": 0, "cache": 0, "slow": 0, "handover": 0}


def test_rates_are_exact_per_second_differences() -> None:
    assert rates({"nic1": BEFORE}, {"nic1": AFTER}, 2.0) == [
        {
            "nic": "nic1",
            "state": "up",
            "frames_per_s": 150.0,
            "eswitch_per_s": 75.0,
            "cache_per_s": 60.0,
            "slow_per_s": 15.0,
            "handover_per_s": 7.5,
            "drops_per_s": {"acl.deny": 3.0},  # eth.short did not move: not listed
            "conntrack": 12,
            "sync_lag_ms_p99": 3.5,
        }
    ]
    row = rates({"nic1": BEFORE}, {"nic1": AFTER}, 3.0)[0]
    assert (row["frames_per_s"], row["handover_per_s"]) == (100.0, 5.0)
    assert row["drops_per_s"] == {"acl.deny": 2.0}
    assert rates({"nic1": BEFORE}, {"nic1": AFTER}, 0.0)[0]["frames_per_s"] == 0.0


def test_a_counter_that_went_down_is_a_rebooted_worker_counting_from_zero() -> None:
    rebooted = nic_stats(30, 10, 6, 8, {"peer_deliver": 2}, {"acl.deny": 1}, state="resyncing")
    row = rates({"nic1": AFTER}, {"nic1": rebooted}, 2.0)[0]
    assert row["state"] == "resyncing"
    assert (row["frames_per_s"], row["eswitch_per_s"], row["cache_per_s"]) == (15.0, 5.0, 3.0)
    assert (row["slow_per_s"], row["handover_per_s"]) == (4.0, 1.0)
    assert row["drops_per_s"] == {"acl.deny": 0.5}
    assert row["sync_lag_ms_p99"] is None  # no lag samples since the reboot
    assert all(v >= 0 for k, v in row.items() if k.endswith("_per_s") and not isinstance(v, dict))


def test_a_drop_reason_first_seen_in_the_window_is_listed() -> None:
    before = nic_stats(100, 0, 0, 0, drops={"acl.deny": 4})
    after = nic_stats(120, 0, 0, 0, drops={"acl.deny": 4, "eth.short": 10})
    assert rates({"nic1": before}, {"nic1": after}, 2.0)[0]["drops_per_s"] == {"eth.short": 5.0}


def test_a_nic_that_did_not_answer_is_a_down_row() -> None:
    got = rates({"nic1": BEFORE, "nic2": BEFORE}, {"nic1": AFTER, "nic2": None}, 2.0)
    assert [r["nic"] for r in got] == ["nic1", "nic2"]
    assert got[1] == {"nic": "nic2", "state": "down"}
    assert got[0]["frames_per_s"] == 150.0


def test_format_top_renders_headers_and_every_nic() -> None:
    quiet = nic_stats(400, 200, 160, 40, {"peer_deliver": 17, "peer_transmit": 4})
    got = rates(
        {"nic1": BEFORE, "nic2": None, "nic3": quiet},
        {"nic1": AFTER, "nic2": None, "nic3": quiet},
        2.0,
    )
    text = format_top(got, 1.0)
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0] == "nicteam top: every 1 s"
    assert lines[1].split() == [
        "nic", "state", "frames/s", "eswitch/s", "cache/s", "slow/s", "handover/s",
        "conntrack", "lag", "p99", "drops/s",
    ]  # fmt: skip
    assert lines[2].split() == [
        "nic1", "up", "150", "75", "60", "15", "7.5", "12", "3.5ms", "acl.deny=3",
    ]  # fmt: skip
    assert lines[3].split() == ["nic2", "down"]
    assert lines[4].split() == ["nic3", "up", "0", "0", "0", "0", "0", "0", "-", "-"]
    assert format_top([], 0.5).splitlines()[0] == "nicteam top: every 0.5 s"


# -- ctl/session.py judge, ctl/summary.py window -------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return load_config(DEFAULT_CONFIG, tmp_path)


def book(
    sent: int, delivered: int, gaps: int = 0, resets: int = 0, sink_resets: int = 0
) -> dict[str, Any]:
    """One flow's books as the endpoints keep them."""
    return {
        "sender": {"sent": sent, "retransmits": 1, "resets": resets},
        "sink": {"delivered": delivered, "gaps": gaps, "resets": sink_resets},
    }


def books_at(config: Config, sent: int, delivered: int, gaps: int = 2) -> dict[str, Any]:
    """Every configured flow's books; deny flows delivered nothing."""
    return {
        f.name: book(sent, delivered if f.expect == "deliver" else 0, gaps) for f in config.flows
    }


def test_default_config_has_the_flows_these_tests_use(config: Config) -> None:
    assert [(f.name, f.expect) for f in config.flows] == [
        ("web1-app1-http", "deliver"),
        ("web1-web2-http", "deliver"),
        ("app1-db1-sql", "deliver"),
        ("web2-ext1-http", "deliver"),
        ("app1-ext1-udp", "deliver"),
        ("web2-app1-dns", "deliver"),
        ("ext1-web1-udp", "deliver"),
        ("ext1-web1-ssh", "deliver"),
        ("ext1-web1-telnet", "deny"),
    ]


def test_judge_everything_delivered_is_no_problem(config: Config) -> None:
    # Gaps that existed before the window (2 per flow) are not the window's.
    before, after = books_at(config, 100, 90, gaps=2), books_at(config, 200, 190, gaps=2)
    assert judge(config, before, after) == []


def test_judge_names_each_problem_once(config: Config) -> None:
    before, after = books_at(config, 100, 90), books_at(config, 200, 190)
    after["web1-app1-http"] = book(200, 90, 2)  # delivered nothing in the window
    after["web1-web2-http"] = book(200, 190, 7)  # 5 new gaps
    after["app1-db1-sql"] = book(200, 190, 2, resets=1)  # a new reset at the sender
    after["web2-ext1-http"] = book(200, 190, 2, sink_resets=2)  # and two at the sink
    after["ext1-web1-telnet"] = book(200, 3, 2)  # a denied flow got through
    assert judge(config, before, after) == [
        "web1-app1-http: nothing delivered",
        "web1-web2-http: 5 frames lost",
        "app1-db1-sql: 1 connections reset",
        "web2-ext1-http: 2 connections reset",
        "ext1-web1-telnet: denied by the firewall, yet 3 delivered",
    ]


def test_judge_old_gaps_and_resets_are_not_counted(config: Config) -> None:
    before, after = books_at(config, 100, 90), books_at(config, 200, 190)
    before["web1-web2-http"] = book(100, 90, gaps=50, resets=3)
    after["web1-web2-http"] = book(200, 190, gaps=50, resets=3)
    before["ext1-web1-telnet"] = book(100, 4)  # leaked before the window, not during it
    after["ext1-web1-telnet"] = book(200, 4)
    assert judge(config, before, after) == []


def test_judge_a_flow_missing_from_the_books_delivered_nothing(config: Config) -> None:
    before, after = books_at(config, 100, 90), books_at(config, 200, 190)
    del after["ext1-web1-ssh"]
    del after["ext1-web1-telnet"]  # a deny flow with no books delivered nothing: fine
    assert judge(config, before, after) == ["ext1-web1-ssh: nothing delivered"]


def test_window_is_the_difference_of_every_count(config: Config) -> None:
    before, after = books_at(config, 100, 90, gaps=2), books_at(config, 250, 230, gaps=2)
    after["web1-web2-http"] = book(250, 230, gaps=9, resets=4)
    after["web1-web2-http"]["sender"]["retransmits"] = 6
    table = window(rows(config, before), rows(config, after))
    assert [r["flow"] for r in table] == [f.name for f in config.flows]
    assert table[0] == {
        "flow": "web1-app1-http", "proto": "tcp", "expect": "deliver", "sent": 150,
        "delivered": 140, "gaps": 0, "retransmits": 0, "resets": 0, "boots": (1, 1),
    }  # fmt: skip
    assert table[1] == {
        "flow": "web1-web2-http", "proto": "tcp", "expect": "deliver", "sent": 150,
        "delivered": 140, "gaps": 7, "retransmits": 5, "resets": 4, "boots": (1, 1),
    }  # fmt: skip

    assert table[-1] == {
        "flow": "ext1-web1-telnet", "proto": "tcp", "expect": "deny", "sent": 150,
        "delivered": 0, "gaps": 0, "retransmits": 0, "resets": 0, "boots": (1, 1),
    }  # fmt: skip


def test_a_window_across_a_host_restart_counts_the_new_books_only(config: Config) -> None:
    before, after = books_at(config, 100, 90, gaps=2), books_at(config, 30, 25, gaps=1)
    for sides in after.values():
        for book in sides.values():
            book["boot"] = 2
    (first, *_) = window(rows(config, before), rows(config, after))
    assert (first["sent"], first["delivered"], first["gaps"]) == (30, 25, 1)


# -- nicd/inspect.py flow_rows, port_name --------------------------------------------------------

VM1, VM4 = vm(1), vm(4)
DATA = TCP_ACK | TCP_PSH


def connect(
    p: Pipeline, a: VM, sport: int, dport: int, now: float = 0.0, data: bool = True
) -> None:
    """VM `a` opens a connection to the external peer (uplink 1), then data each way."""
    p.process(PortKind.VF, a.ppid, tcp_out(a, sport, dport, TCP_SYN, seq=100), now)
    p.process(PortKind.UPLINK, 1, tcp_in(a, dport, sport, TCP_SYN | TCP_ACK, 500, 101), now)
    p.process(PortKind.VF, a.ppid, tcp_out(a, sport, dport, TCP_ACK, seq=101, ack=501), now)
    if data:
        p.process(
            PortKind.VF, a.ppid, tcp_out(a, sport, dport, DATA, 101, 501, b"payload"), now + 1
        )
        p.process(PortKind.UPLINK, 1, tcp_in(a, dport, sport, DATA, 501, 108, b"answer"), now + 1)
        p.process(PortKind.UPLINK, 1, tcp_in(a, dport, sport, DATA, 507, 108, b"answer"), now + 2)


def nic1_only() -> Pipeline:
    """nic1's pipeline with nic2's uplinks down: VM1 leaves by nic1/p1 (port-id teaming)."""
    p = make_pipeline("nic1")
    p.set_uplink_live("nic2/p0", False)
    p.set_uplink_live("nic2/p1", False)
    selected = p.team.select(VM1.vpid, 0)
    assert selected is not None and selected.name == "nic1/p1"
    return p


def test_port_name_names_vms_and_uplinks() -> None:
    p = make_pipeline("nic1")
    assert [port_name(p, 0, t) for t in (101, 102, 999)] == ["vm1", "vm2", "vf999"]
    assert [port_name(p, 1, t) for t in (1, 2, 9)] == ["nic1/p0", "nic1/p1", "nic1/uplink9"]
    assert port_name(p, 3, 1, "nic2") == "nic2/p0"  # a sibling's uplink
    assert port_name(p, 2, 3, "nic2") == "nic2:vm3"  # the sibling holding VPID 3
    assert port_name(make_pipeline("nic2"), 0, 101) == "vm3"


def test_eswitch_rows_after_a_handshake_and_data() -> None:
    p = nic1_only()
    connect(p, VM1, 40000, 80)
    got = flow_rows(p, "eswitch", now=3.0)
    assert got["total"] == 2
    out, back = got["flows"]
    match = {
        "zone": 1, "proto": "tcp", "src": "10.1.0.11", "dst": "192.0.2.50", "sport": 40000,
        "dport": 80, "state": "ESTABLISHED", "timeout_s": 86398, "packets": 4, "bytes": 222,
        "sw_ok": True, "hw_ok": True, "tier": "eswitch", "rule": "out",
    }  # fmt: skip
    # The record's counters are the slow path's (the handshake and the first answer) until a
    # readback adds the entries' hits; the entry counts its own hits.
    assert out.pop("match") == match
    assert out == {
        "tier": "eswitch",
        "in_port": "vm1",
        "zones": [1],
        "actions": ["push_vlan(10),uplink(nic1/p1)"],  # VM1's segment "web" is VLAN 10
        "rule": "out",
        "packets": 1,
        "bytes": 61,
        "used_s": 2.0,
        "stale": False,
    }
    assert back.pop("match") == match  # both directions depend on the one record of zone 1
    assert back == {
        "tier": "eswitch",
        "in_port": "nic1/p0",  # the uplink the answers came in on
        "zones": [1],
        "actions": ["pop_vlan,vf(vm1)"],
        "rule": "out",
        "packets": 1,
        "bytes": 64,
        "used_s": 1.0,
        "stale": False,
    }


def test_untagged_segment_and_handover_actions() -> None:
    p = make_pipeline("nic1")  # every uplink live: VM1 leaves by a sibling's uplink
    connect(p, VM1, 40000, 80)
    first = flow_rows(p, "eswitch", 3.0)["flows"][0]
    assert (first["in_port"], first["actions"]) == (
        "vm1",
        ["push_vlan(10),peer_transmit(nic2/p0)"],
    )
    p2 = make_pipeline("nic2")
    connect(p2, VM4, 40000, 80)  # VM4's segment "db" is untagged
    rows2 = flow_rows(p2, "eswitch", 3.0)["flows"]
    assert [(r["in_port"], r["actions"]) for r in rows2] == [
        ("vm4", ["peer_transmit(nic1/p1)"]),
        ("nic2/p0", ["vf(vm4)"]),
    ]


def test_slow_rows_are_records_no_fast_tier_holds() -> None:
    p = nic1_only()
    connect(p, VM1, 40000, 80)
    connect(p, VM1, 40001, 22, now=10.0, data=False)  # ssh-inspect: every packet slow
    p.process(PortKind.VF, VM1.ppid, tcp_out(VM1, 40002, 80, TCP_SYN, seq=100), 20.0)
    got = flow_rows(p, "slow", now=21.0)
    assert got["total"] == 2
    ssh, half_open = got["flows"]
    assert ssh["match"]["dport"] == 22 and ssh["match"]["state"] == "ESTABLISHED"
    assert (ssh["match"]["sw_ok"], ssh["match"]["hw_ok"]) == (False, False)
    assert {k: v for k, v in ssh.items() if k != "match"} == {
        "tier": "slow",
        "zones": [1],
        "rule": "ssh-inspect",
        "packets": 3,
        "bytes": 162,
        "why": "rule inspects every packet",
    }
    assert half_open["match"]["sport"] == 40002 and half_open["match"]["state"] == "SYN_SENT"
    assert half_open["why"] == "not established yet"
    assert half_open["rule"] == "out"


def test_cache_tier_and_all_tiers_and_limit() -> None:
    p = nic1_only()
    connect(p, VM1, 40000, 80)
    connect(p, VM1, 40002, 5432, data=False)  # db-sw-only: software offload, flow cache
    p.process(PortKind.VF, VM1.ppid, tcp_out(VM1, 40002, 5432, DATA, 101, 501, b"q"), 1.0)
    connect(p, VM1, 40001, 22, data=False)
    cache = flow_rows(p, "cache", 3.0)
    assert cache["total"] == 1
    (row,) = cache["flows"]
    assert (row["tier"], row["in_port"], row["rule"]) == ("cache", "vm1", "db-sw-only")
    assert row["actions"] == ["push_vlan(10),uplink(nic1/p1)"]
    assert row["match"]["dport"] == 5432 and row["match"]["hw_ok"] is False
    every = flow_rows(p, None, 3.0)
    assert every["total"] == 4
    assert [(r["tier"], r["match"]["dport"]) for r in every["flows"]] == [
        ("eswitch", 80), ("eswitch", 80), ("cache", 5432), ("slow", 22),
    ]  # fmt: skip
    capped = flow_rows(p, None, 3.0, limit=2)
    assert capped["total"] == 4
    assert capped["flows"] == every["flows"][:2]
    assert flow_rows(p, None, 3.0, limit=0) == {"total": 4, "flows": []}


def test_entries_of_an_older_generation_are_stale() -> None:
    p = nic1_only()
    connect(p, VM1, 40000, 80)
    assert [r["stale"] for r in flow_rows(p, "eswitch", 3.0)["flows"]] == [False, False]
    gen = p.generation
    p.set_topology(SEGMENTS, interfaces())
    assert p.generation == gen + 1
    got = flow_rows(p, "eswitch", 3.0)
    assert got["total"] == 2
    assert [r["stale"] for r in got["flows"]] == [True, True]


def test_a_migrate_whose_target_restarted_does_not_subtract_two_boots() -> None:
    from ctl.migrate import format_migrate

    move = {"vpid": 3, "from": "nic1", "from_ppid": 101, "to": "nic2", "ppid": 102}
    r = {"vm": "app1", "nic": "nic2", "epoch": 4, "moves": [move], "connections": [],
         "taken_over": None}  # fmt: skip
    text = format_migrate(r)
    assert "nic2 restarted during the move and carries 0 connections" in text
    assert "took over -" not in format_migrate(r | {"taken_over": 2})
