"""Per-tier cost of the NIC datapath, classifier scaling and conntrack memory.

    python -m bench.datapath      (prints a table, writes bench/results/datapath.json)

Tier rates are frames/s through `Pipeline.process_batch` in batches of 32, on the local
VM-to-VM path (the sender's from-VM and the receiver's to-VM firewall stages on one NIC) and,
for comparison, VM to the network (one stage, then the team). "Slow-path miss" frames are each
the SYN of a new connection. The raw bus ceiling is measured in the same run.
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from bench.common import bus_ceiling_fps, print_table, rate, write_results
from nicd.datapath.classifier import Classifier
from nicd.datapath.conntrack import ConntrackTable, Timeouts
from nicd.datapath.pipeline import DatapathConfig, Pipeline, PortKind
from nicd.datapath.rules import Direction, Rule, RuleAction, RuleSet
from nicd.datapath.teaming import TeamPolicy, Uplink
from nicd.datapath.vswitch import Interface, Segment
from nicd.policy import ruleset_from_config
from wire import build
from wire.addr import mac_bytes
from wire.frames import parse_frame_untrusted
from wire.protocols import TCP_ACK, TCP_SYN

BATCH = 32
FLOWS = 256
A_MAC, B_MAC, PEER_MAC = (mac_bytes(f"02:00:00:00:00:0{i}") for i in (1, 2, 9))
A_IP, B_IP, PEER_IP = IPv4Address("10.1.0.11"), IPv4Address("10.1.0.12"), IPv4Address("192.0.2.9")
RULES = [
    {"name": "telnet", "priority": 10, "action": "reject", "proto": "tcp", "dport": 23},
    {"name": "web", "priority": 20, "action": "allow", "proto": "tcp", "dport": 80},
    {"name": "dns", "priority": 30, "action": "allow", "proto": "udp", "dport": 53},
    {"name": "out", "priority": 100, "action": "allow", "direction": "from-vm"},
]


def make_nic(eswitch_capacity: int = 65536, cache: bool = True) -> Pipeline:
    """One NIC with two local VMs on segment `web` and two uplinks."""
    config = DatapathConfig(eswitch_capacity=eswitch_capacity, cache_enabled=cache, ct_limit=10**7)
    ifaces = [
        Interface(1, "a", A_MAC, (A_IP,), "web"),
        Interface(2, "b", B_MAC, (B_IP,), "web"),
    ]
    uplinks = [Uplink("nic1", 1, "nic1/p0"), Uplink("nic1", 2, "nic1/p1")]
    p = Pipeline(
        "nic1",
        config,
        ruleset_from_config(RULES),
        [Segment("web", None)],
        ifaces,
        uplinks,
        TeamPolicy.PORT_ID,
    )
    p.apply_map(1, [(1, "nic1", 101), (2, "nic1", 102)])
    return p


def _tcp(sport: int, flags: int, back: bool, to_peer: bool, payload: bytes = b"") -> bytes:
    dst_mac, dst_ip = (PEER_MAC, PEER_IP) if to_peer else (B_MAC, B_IP)
    if back:
        return build.tcp_frame(dst_mac, A_MAC, dst_ip, A_IP, 80, sport, flags, payload=payload)
    return build.tcp_frame(A_MAC, dst_mac, A_IP, dst_ip, sport, 80, flags, payload=payload)


def established(p: Pipeline, to_peer: bool) -> list[tuple[PortKind, int, bytes]]:
    """Open FLOWS connections through `p`; return a batch of their data segments."""
    back_in = (PortKind.UPLINK, 1) if to_peer else (PortKind.VF, 102)
    for sp in range(1000, 1000 + FLOWS):
        p.process(PortKind.VF, 101, _tcp(sp, TCP_SYN, False, to_peer), 0.0)
        p.process(*back_in, _tcp(sp, TCP_SYN | TCP_ACK, True, to_peer), 0.0)
        p.process(PortKind.VF, 101, _tcp(sp, TCP_ACK, False, to_peer), 0.0)
    data = b"x" * 64
    return [
        (PortKind.VF, 101, _tcp(1000 + i * 7 % FLOWS, TCP_ACK, False, to_peer, data))
        for i in range(BATCH)
    ]


def _hits(p: Pipeline, batch: list[tuple[PortKind, int, bytes]]) -> Callable[[], int]:
    """One batch of fast-tier hits, for `rate`."""

    def run() -> int:
        p.process_batch(batch, 1.0)
        return BATCH

    return run


def tier_rates(to_peer: bool) -> dict[str, float]:
    """eSwitch hit, cache hit and slow-path miss frames/s on one path."""
    out = {}
    for name, p in (("eswitch", make_nic()), ("cache", make_nic(eswitch_capacity=0))):
        batch = established(p, to_peer)
        p.process_batch(batch, 1.0)
        tiers = {d.tier for d in (p.process(*f, 1.0) for f in batch)}
        assert tiers == {p.eswitch.tier if name == "eswitch" else p.cache.tier}, tiers
        out[name] = rate(_hits(p, batch))

    out["slow"] = slow_miss_rate(to_peer)
    return out


def slow_miss_rate(to_peer: bool, seconds: float = 1.0, repeats: int = 3) -> float:
    """Slow-path misses/s in-process: each frame the SYN of a new connection (bench.e2e too)."""
    syns = [
        (PortKind.VF, 101, _tcp(sp % 60000 + 1, TCP_SYN, False, to_peer)) for sp in range(60000)
    ]
    batches = [syns[i : i + BATCH] for i in range(0, len(syns), BATCH)]
    nic, at = make_nic(), 0

    def miss_batch() -> int:
        nonlocal nic, at
        if at == len(batches):
            nic, at = make_nic(), 0  # a fresh NIC: every SYN is a new flow
        nic.process_batch(batches[at], 1.0)
        at += 1
        return BATCH

    return rate(miss_batch, seconds, repeats)


def random_rules(n: int, rng: random.Random) -> RuleSet:
    """n random rules: varied prefixes, ports and ranges, protos, segments, directions."""
    rules = []
    for i in range(n):
        proto = rng.choice([6, 17, None, 1])
        ports = proto in (6, 17)
        lo = rng.randrange(0, 65000)
        rules.append(
            Rule(
                name=f"r{i}",
                priority=i,
                action=rng.choice([RuleAction.ALLOW, RuleAction.DROP]),
                segment=rng.choice([None, "web", "db", "app"]),
                direction=rng.choice([None, Direction.FROM_VM, Direction.TO_VM]),
                src=_net(rng) if rng.random() < 0.7 else None,
                dst=_net(rng) if rng.random() < 0.7 else None,
                proto=proto,
                sport=(lo, min(65535, min(65535, lo + rng.randrange(0, 500))))
                if ports and rng.random() < 0.3
                else None,
                dport=(lo, min(65535, lo + rng.choice([0, 0, 10, 1000])))
                if ports and rng.random() < 0.8
                else None,
            )
        )
    return RuleSet(tuple(rules))


def _net(rng: random.Random) -> IPv4Network:
    plen = rng.choice([8, 16, 20, 24, 24, 28, 32])
    addr = rng.randrange(0, 1 << 32) & ~((1 << (32 - plen)) - 1)
    return IPv4Network((addr, plen))


def classifier_ratio() -> tuple[float, float, float]:
    """(ns per lookup at 10 rules, at 10,000 rules, ratio), on the same random packets."""
    rng = random.Random(7)
    packets = [
        (
            rng.choice(["web", "db", "app"]),
            rng.choice([Direction.FROM_VM, Direction.TO_VM]),
            4,
            rng.choice([6, 17, 1]),
            rng.randrange(0, 1 << 32),
            rng.randrange(0, 1 << 32),
            rng.randrange(0, 65536),
            rng.randrange(0, 65536),
        )
        for _ in range(20000)
    ]
    costs = []
    for n in (10, 10000):
        lookup = Classifier(random_rules(n, rng)).lookup
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for pkt in packets:
                lookup(*pkt)
            best = min(best, (time.perf_counter() - start) / len(packets))
        costs.append(best * 1e9)
    return costs[0], costs[1], costs[1] / costs[0]


def ct_bytes_per_record(n: int = 100_000) -> float:
    """Traced bytes per conntrack record (table entries, keys, addresses, record) at n records.

    Frames are parsed inside the traced window, so what a record keeps alive (its address and
    port ints) counts, while each transient parsed packet nets out.
    """
    frames = [
        build.tcp_frame(A_MAC, B_MAC, IPv4Address(0x0A000000 + i // 50000), B_IP,
                        1024 + i % 50000, 80, TCP_SYN)
        for i in range(n)
    ]  # fmt: skip
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    table = ConntrackTable(Timeouts(), n)
    for i, frame in enumerate(frames):
        pkt = parse_frame_untrusted(frame)
        table.create(1 + i % 8, 0, pkt, 1000.0 + i * 0.001, "web", True, True)
    del pkt
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(table) == n
    return used / n


def main() -> None:
    """Run every measurement, print the table, write the JSON."""
    sample = _tcp(1000, TCP_ACK, False, False, b"x" * 64)
    ceiling = bus_ceiling_fps(sample, BATCH)
    local = tier_rates(to_peer=False)
    network = tier_rates(to_peer=True)
    c10, c10k, ratio = classifier_ratio()
    ct_bytes = ct_bytes_per_record()
    results = {
        "batch": BATCH,
        "path": "vm-to-vm on one NIC (from-VM + to-VM stages)",
        "bus_ceiling_fps": round(ceiling),
        "eswitch_hit_fps": round(local["eswitch"]),
        "cache_hit_fps": round(local["cache"]),
        "slow_miss_fps": round(local["slow"]),
        "eswitch_vs_slow": round(local["eswitch"] / local["slow"], 2),
        "cache_vs_slow": round(local["cache"] / local["slow"], 2),
        "to_network": {k + "_fps": round(v) for k, v in network.items()},
        "to_network_eswitch_vs_slow": round(network["eswitch"] / network["slow"], 2),
        "classifier_ns_10": round(c10),
        "classifier_ns_10000": round(c10k),
        "classifier_cost_ratio_10000_vs_10": round(ratio, 2),
        "ct_bytes_per_record": round(ct_bytes, 1),
    }
    path = write_results("datapath", results)
    es_x, cache_x = results["eswitch_vs_slow"], results["cache_vs_slow"]
    net_x = results["to_network_eswitch_vs_slow"]
    print_table(
        f"nicteam datapath (batches of {BATCH}; raw bus ceiling {ceiling:,.0f} frames/s)",
        [
            ("eSwitch hit", f"{local['eswitch']:,.0f} f/s", f"{es_x}x slow (>= 10x)"),
            ("flow-cache hit", f"{local['cache']:,.0f} f/s", f"{cache_x}x slow (>= 4x)"),
            ("slow-path miss", f"{local['slow']:,.0f} f/s", "new connection per frame"),
            ("to network: eSwitch", f"{network['eswitch']:,.0f} f/s", "one stage + team"),
            ("to network: cache", f"{network['cache']:,.0f} f/s", ""),
            ("to network: slow", f"{network['slow']:,.0f} f/s", f"eSwitch {net_x}x slow"),
            ("classifier 10 rules", f"{c10:,.0f} ns", ""),
            ("classifier 10k rules", f"{c10k:,.0f} ns", f"ratio {ratio:.2f} (<= 5)"),
            ("conntrack memory", f"{ct_bytes:,.0f} B/rec", "at 100,000 records (<= 600)"),
            ("raw bus ceiling", f"{ceiling:,.0f} f/s", "ipc, msgpack batches, same run"),
        ],
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
