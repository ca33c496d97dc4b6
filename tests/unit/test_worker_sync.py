"""Two NIC OS workers and hostd on the memory bus: what one NIC learns, its sibling holds.

Real workers (`NicWorker`), a real hostd running the default workload, real timers; only the
transport is in memory, and the fabric is a bare node that injects uplink frames.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address
from pathlib import Path

from bus.messages import FrameBatch, MapUpdate
from configs import FABRICD
from tests.unit.workerrig import rig, until
from wire.addr import mac_bytes
from wire.build import gratuitous_arp


async def test_a_mac_learned_on_one_nic_is_known_to_its_sibling(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        router = mac_bytes("02:aa:00:00:00:99")
        frame = gratuitous_arp(router, IPv4Address("10.0.10.254"), vlan=10)
        r.fabric.connect("nic1", r.host.config.endpoint("nic1"))
        await asyncio.wait_for(r.fabric.wait_connected("nic1"), 5)
        assert r.fabric.send("nic1", FrameBatch(FABRICD, [(1, frame)]))

        def learned(nic: str) -> bool:
            p = r.nics[nic].pipeline
            return p is not None and any(e.mac == router for e in p.vswitch.learned())

        await until("nic1 learns the router", lambda: learned("nic1"))
        await until("nic2 learns it from nic1", lambda: learned("nic2"))
        p2 = r.nics["nic2"].pipeline
        assert p2 is not None
        (entry,) = [e for e in p2.vswitch.learned() if e.mac == router]
        assert entry.ip == int(IPv4Address("10.0.10.254"))
        # nic2 learned it from the stream, not from a frame: it does not echo it back.
        cache = r.nics["nic1"].sync.caches["nic2"]
        assert ("web", int.from_bytes(router, "big")) not in cache.macs


async def test_each_nics_table_and_its_siblings_copy_agree(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        n1, n2 = r.nics["nic1"], r.nics["nic2"]

        def connections() -> bool:  # the workload opened connections on both NICs
            return all(n.pipeline is not None and len(n.pipeline.ct) >= 3 for n in (n1, n2))

        await until("connections on both NICs", connections)

        def agree() -> bool:
            d1 = n1.sync.digests(n1.pipeline, n1.now())  # type: ignore[arg-type]
            d2 = n2.sync.digests(n2.pipeline, n2.now())  # type: ignore[arg-type]
            return (
                d2["peers"]["nic1"]["held"] == d1["seq"]
                and d2["peers"]["nic1"]["digest"] == d1["digest"]
                and d1["peers"]["nic2"]["held"] == d2["seq"]
                and d1["peers"]["nic2"]["digest"] == d2["digest"]
            )

        await until("both copies caught up and equal", agree)
        lag = n2.sync.lag()
        assert lag["samples"] > 0 and 0 <= lag["p50_ms"] <= lag["max_ms"]


async def test_a_migrate_keeps_connections_when_the_old_home_applies_the_map_first(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        n1, n2 = r.nics["nic1"], r.nics["nic2"]
        assert n1.pipeline is not None and n2.pipeline is not None
        copies = n2.sync.caches["nic1"]
        await until("nic2 holds copies of app1's connections",
                    lambda: sum(k[0] == 3 for k in copies.records) >= 2)  # fmt: skip
        epoch = r.host.fpag.epoch + 1
        entries = [(v, "nic2", 150 + v) if v in (3, 4) else (v, nic, ppid)
                   for v, nic, ppid in r.host.fpag.entries()]  # fmt: skip
        update = MapUpdate(epoch, entries)
        # The race: nic1 releases app1 and streams that before nic2 has seen the map.
        n1._on_map("h1", update)
        await until("nic1's stream after the release reached nic2",
                    lambda: copies.held == n1.sync.origin.seq)  # fmt: skip
        zone3 = sum(k[0] == 3 for k in copies.records)
        n2._on_map("h1", update)
        assert n2.sync.committed >= zone3 >= 2
        assert sum(rec.zone == 3 for rec in n2.pipeline.ct) >= zone3
        assert not any(rec.zone in (3, 4) for rec in n1.pipeline.ct)
