"""A host daemon and its NIC OS workers on the memory bus, for one-process tests.

Real workers (`NicWorker`), a real hostd running the config's workload, real timers; only the
transport is in memory, and the fabric is a bare node that injects uplink frames. Waits poll
with a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bus.nicstate import NicState
from bus.node import BaseNode
from bus.testing import MemoryNetwork
from configs import DEFAULT_CONFIG, FABRICD, load_config
from hostd.daemon import HostDaemon
from nicd.worker import NicWorker

T = TypeVar("T")


@dataclass
class Rig:
    host: HostDaemon
    nics: dict[str, NicWorker]
    fabric: BaseNode[Any]
    net: MemoryNetwork


async def until(what: str, probe: Callable[[], T | None], timeout: float = 10.0) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := probe():
            return got
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def extra_nics(names: list[str]) -> str:
    """Config text of NICs with no VMs homed on them (survivors for a failover)."""
    return "".join(
        f'[[hosts.nics]]\nname = "{n}"\nuplinks = ["p0", "p1"]\neswitch_capacity = 4096\n'
        "ct_limit = 262144\n\n"
        for n in names
    )


def config_text(extra: list[str] = ()) -> str:  # type: ignore[assignment]
    """The default config, with `extra` NICs added to host h1."""
    text = DEFAULT_CONFIG.read_text()
    return text.replace("[vms.web1]", extra_nics(list(extra)) + "[vms.web1]", 1)


def _is_up(nic: NicWorker) -> Callable[[], bool]:
    return lambda: nic.core.state is NicState.UP


@asynccontextmanager
async def rig(tmp_path: Path, extra: list[str] = ()) -> AsyncIterator[Rig]:  # type: ignore[assignment]
    """The default host with its NICs (plus `extra` ones), every NIC up."""
    path = tmp_path / "cluster.toml"
    path.write_text(config_text(extra))
    config = load_config(path, tmp_path)
    net = MemoryNetwork()
    fabric = net.node(FABRICD, config.endpoint(FABRICD))
    await fabric.start()
    names = [n.name for n in config.host("h1").nics]
    nics = {n: NicWorker(config, config.nic(n), net.node(n, config.endpoint(n))) for n in names}
    host = HostDaemon(config, config.host("h1"), net.node("h1", config.endpoint("h1")))
    daemons: list[NicWorker | HostDaemon] = [*nics.values(), host]
    tasks = [asyncio.create_task(d.run()) for d in daemons]
    try:
        for nic in nics.values():
            await until(f"{nic.spec.name} up", _is_up(nic))
        await until("the host sees every NIC up",
                    lambda: all(host.nic_state.get(n) is NicState.UP for n in names))  # fmt: skip
        yield Rig(host, nics, fabric, net)
    finally:
        for d in daemons:
            d.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
        await fabric.close()
