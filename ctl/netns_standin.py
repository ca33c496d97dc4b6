"""Stand-in for `kernel/netns.py` (issue 15's namespaces), until that module lands: the three
functions `nicteam exec` needs, with the same names and behaviour. Replace the import in
ctl/nsexec.py with `kernel.netns` and delete this file then.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["NETNS_DIR", "exec_argv", "exists", "namespace"]

NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps its named namespaces


def namespace(tag: str, owner: str) -> str:
    """The namespace of VM/peer `owner` in the cluster tagged `tag`."""
    return f"{tag}.{owner}"


def exists(ns: str) -> bool:
    """Whether network namespace `ns` exists (as `ip netns` names it)."""
    return (NETNS_DIR / ns).exists()


def exec_argv(ns: str, argv: Sequence[str]) -> list[str]:
    """The command line running `argv` inside namespace `ns`."""
    return ["ip", "netns", "exec", ns, *argv]
