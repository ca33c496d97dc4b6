"""hostd's bus conversation on the memory bus: hello, heartbeats and the control commands."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus.messages import (
    ControlReply,
    ControlRequest,
    Heartbeat,
    Hello,
    MapUpdate,
    PolicyUpdate,
    Probe,
)
from bus.nicstate import NicState
from bus.node import BaseNode
from bus.testing import MemoryNetwork
from configs import load_default
from hostd.daemon import HostDaemon

DEADLINE = 5.0


@dataclass
class Rig:
    daemon: HostDaemon
    nics: Mapping[str, BaseNode[Any]]
    ctl: BaseNode[Any]
    req_id: int = 0
    inbox: dict[str, list[Any]] = field(default_factory=dict)

    async def control(self, cmd: str, **args: object) -> ControlReply:
        self.req_id += 1
        assert self.ctl.send("h1", ControlRequest(self.req_id, cmd, dict(args)))
        while True:
            for _, reply in await asyncio.wait_for(self.ctl.recv_batch(), DEADLINE):
                if isinstance(reply, ControlReply) and reply.req_id == self.req_id:
                    return reply

    async def received(self, nic: str, kind: type) -> Any:
        """The next message of `kind` that `nic` got (earlier ones of other kinds are kept)."""
        inbox = self.inbox.setdefault(nic, [])
        while True:
            for i, msg in enumerate(inbox):
                if isinstance(msg, kind):
                    return inbox.pop(i)
            batch = await asyncio.wait_for(self.nics[nic].recv_batch(), DEADLINE)
            inbox.extend(msg for _, msg in batch)

    async def answer_probe(self, nic: str, epoch: int = 0, entries: list[Any] | None = None) -> int:
        """Answer hostd's next recovery probe as a NIC holding map `epoch` (0: none yet)."""
        probe = await self.received(nic, Probe)
        assert probe.want_map
        if epoch:
            self.nics[nic].send("h1", MapUpdate(epoch, entries or []))
        state = NicState.UP if epoch else NicState.STARTING
        self.nics[nic].send("h1", Heartbeat(nic, 1, epoch, state, probe=probe.seq))
        return probe.seq


async def until_recovered(daemon: HostDaemon) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while daemon.recovering:
        assert loop.time() < end, "hostd still recovering"
        await asyncio.sleep(0.005)


@asynccontextmanager
async def rig(tmp_path: Path, recover: bool = True, boot: int = 1) -> AsyncIterator[Rig]:
    """hostd and bare NIC nodes; with `recover`, the NICs (holding no map) answer its probes."""
    config = load_default(tmp_path)
    net = MemoryNetwork()
    # Bound where the config says, so hostd's own connects find them.
    nics = {name: net.node(name, config.endpoint(name)) for name in ("nic1", "nic2")}
    ctl = net.node("ctl")
    for node in (*nics.values(), ctl):
        await node.start()
    daemon = HostDaemon(config, config.host("h1"), net.node("h1", config.endpoint("h1")), boot)
    task = asyncio.create_task(daemon.run())
    try:
        for node in (*nics.values(), ctl):
            node.connect("h1", config.endpoint("h1"))
            await asyncio.wait_for(node.wait_connected("h1"), DEADLINE)
        r = Rig(daemon, nics, ctl)
        if recover:
            for nic in nics:
                await r.answer_probe(nic)
            await until_recovered(daemon)
        yield r
    finally:
        daemon.stop()
        await asyncio.wait_for(task, DEADLINE)
        for node in (*nics.values(), ctl):
            await node.close()


async def test_hello_gets_policy_and_map(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.nics["nic1"].send("h1", Hello("nic1", "nic"))
        policy = await r.received("nic1", PolicyUpdate)
        assert policy.policy.team_policy == "port-id"
        mapping = await r.received("nic1", MapUpdate)
        assert mapping.epoch == 1 and len(mapping.entries) == 5


async def test_map_command_names_every_interface(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        reply = await r.control("map")
        assert reply.ok, reply.error
        result: dict[str, Any] = reply.result  # a JSON-like tree
        ports = result["ports"]
        assert [p["vm"] for p in ports] == ["web1", "web2", "app1/0", "app1/1", "db1"]
        assert ports[0] == {
            "vpid": 1,
            "vm": "web1",
            "mac": "02:00:00:00:01:11",
            "nic": "nic1",
            "ppid": 100,
        }
        assert result["entries"][0] == [1, "nic1", 100]


async def test_team_policy_command_pushes_a_new_policy_to_every_nic(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        bad = await r.control("team-policy", policy="round-robin")
        assert not bad.ok and "must be one of" in bad.error
        reply = await r.control("team-policy", policy="l4-hash")
        assert reply.ok and reply.result == {"old": "port-id", "policy": "l4-hash", "version": 2}
        for nic in ("nic1", "nic2"):
            update = await r.received(nic, PolicyUpdate)
            assert (update.version, update.policy.team_policy) == (2, "l4-hash")
        # A NIC that says hello later gets the policy as it is now.
        r.nics["nic2"].send("h1", Hello("nic2", "nic"))
        assert (await r.received("nic2", PolicyUpdate)).policy.team_policy == "l4-hash"
        assert (await r.control("stats")).result["team_policy"] == "l4-hash"


async def test_heartbeats_report_pulled_cables(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.nics["nic2"].send("h1", Heartbeat("nic2", 1, 1, NicState.UP, [2, 9]))  # 9: no such port
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE

        async def links_down() -> object:
            stats: dict[str, Any] = (await r.control("stats")).result
            return stats["links_down"].get("nic2")

        while await links_down() != ["nic2/p1"]:
            assert loop.time() < end
            await asyncio.sleep(0.01)


async def test_a_failing_command_is_an_error_reply_not_a_dead_host(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.daemon.flow_stats = lambda: {"bad": (1, 2)}  # type: ignore[method-assign]
        reply = await r.control("stats")
        assert not reply.ok and "internal error" in reply.error
        assert (await r.control("map")).ok


async def test_a_restarted_host_takes_the_newest_map_its_nics_hold_before_deciding(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, recover=False) as r:
        assert r.daemon.recovering
        # While it recovers it moves nothing, answers no hello, sends no map.
        refused = await r.control("migrate", vm="app1", nic="nic2")
        assert not refused.ok and "recovering" in refused.error
        moved = [(1, "nic1", 100), (2, "nic2", 100), (3, "nic2", 101), (4, "nic2", 102),
                 (5, "nic2", 103)]  # fmt: skip
        older = [(v, "nic1" if v == 1 else "nic2", p) for v, _, p in moved]
        await r.answer_probe("nic1", 6, older)  # nic1 missed the last epoch
        assert r.daemon.recovering  # nic2 has not answered yet
        await r.answer_probe("nic2", 7, moved)
        await until_recovered(r.daemon)
        assert r.daemon.fpag.epoch == 7 and r.daemon.fpag.entries() == moved
        assert not r.daemon.supervisor.down
        # Every NIC is told the map in force; the one behind applies it.
        for nic in ("nic1", "nic2"):
            update = await r.received(nic, MapUpdate)
            assert (update.epoch, update.entries) == (7, moved)
        assert (await r.control("map")).result["epoch"] == 7


async def test_a_restarted_hosts_epochs_are_above_any_an_earlier_boot_issued(
    tmp_path: Path,
) -> None:
    config = load_default(tmp_path)
    net = MemoryNetwork()
    daemon = HostDaemon(config, config.host("h1"), net.node("h1", config.endpoint("h1")), boot=3)
    task = asyncio.create_task(daemon.run())
    try:
        await until_recovered(daemon)  # no NIC answers: recovered without them after 0.5 s
        assert daemon.fpag.epoch == 2 << 32
        assert daemon.supervisor.probe_seq > 0  # it did ask
    finally:
        daemon.stop()
        await asyncio.wait_for(task, DEADLINE)


async def test_a_beat_echoing_an_earlier_boots_probe_is_no_answer_to_recovery(
    tmp_path: Path,
) -> None:
    # NICs echo the highest probe they saw: the earlier boot's. The new daemon must not take
    # that for an answer and end its recovery with no map (it took the config's map once).
    async with rig(tmp_path, recover=False, boot=2) as r:
        for nic in ("nic1", "nic2"):
            r.nics[nic].send("h1", Heartbeat(nic, 9, 2, NicState.UP, probe=7))
        await r.answer_probe("nic1", 2, [(v, "nic2", 100 + v) for v in range(1, 6)])
        assert r.daemon.recovering  # nic2 has answered no probe of this boot
        await r.answer_probe("nic2", 2, [(v, "nic2", 100 + v) for v in range(1, 6)])
        await until_recovered(r.daemon)
        assert {nic for _, nic, _ in r.daemon.fpag.entries()} == {"nic2"}


async def test_an_answer_whose_map_was_lost_is_asked_again(tmp_path: Path) -> None:
    # A NIC answers a probe before its link to the restarted host is up: the map it sent
    # first is dropped, the heartbeat after it arrives. The host must ask again, not recover
    # with no map (it took the config's once).
    async with rig(tmp_path, recover=False, boot=2) as r:
        moved = [(v, "nic2", 100 + v) for v in range(1, 6)]
        probe = await r.received("nic1", Probe)
        r.nics["nic1"].send("h1", Heartbeat("nic1", 3, 5, NicState.UP, probe=probe.seq))  # no map
        await r.answer_probe("nic2", 5, moved)
        await r.answer_probe("nic1", 5, moved)  # asked again: this time the map arrives
        await until_recovered(r.daemon)
        assert r.daemon.fpag.entries() == moved


async def test_a_nic_map_that_cannot_be_this_hosts_is_not_recovered_from(tmp_path: Path) -> None:
    async with rig(tmp_path, recover=False, boot=2) as r:
        good = [(v, "nic1", 100 + v) for v in range(1, 6)]
        bad = [(1, "nic1", 100), (2, "nic2", 100), (9, "nic2", 100)]  # a port twice, VPID 9
        await r.answer_probe("nic2", 8, bad)
        await r.answer_probe("nic1", 5, good)
        await until_recovered(r.daemon)
        assert r.daemon.fpag.entries() == good


async def test_a_fresh_hosts_workload_waits_until_every_nic_is_up(tmp_path: Path) -> None:
    """Nothing is sent into a NIC that has no policy and map yet: the VMs wait for all."""
    async with rig(tmp_path) as r:
        epoch = r.daemon.fpag.epoch
        r.nics["nic1"].send("h1", Heartbeat("nic1", 2, epoch, NicState.UP))
        r.nics["nic2"].send("h1", Heartbeat("nic2", 2, epoch, NicState.RESYNCING))
        await until(lambda: r.daemon.nic_state.get("nic2") is NicState.RESYNCING)
        assert not any(ep.flows for ep in r.daemon.endpoints.values()), "started too soon"
        assert not r.daemon._announced
        r.nics["nic2"].send("h1", Heartbeat("nic2", 3, epoch, NicState.UP))
        await until(lambda: any(ep.flows for ep in r.daemon.endpoints.values()))
        assert r.daemon._announced == {"nic1", "nic2"}


async def until(cond: Callable[[], bool]) -> None:
    """Poll `cond` on the loop until it holds; fail after DEADLINE."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not cond():
        assert loop.time() < end, "condition not met before the deadline"
        await asyncio.sleep(0.005)
