"""Free tcp ports for tests that give processes fixed tcp endpoints."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def unused_ports(count: int, addresses: tuple[str, ...] = ("127.0.0.1",)) -> int:
    """A first port of `count` consecutive tcp ports free on every address, below the kernel's
    ephemeral range: a port from there can be handed to any outgoing connection meanwhile."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10000, low - count)
        if all(_bindable(a, base + i) for a in addresses for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports below {low}")


def _bindable(address: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True
