"""Who may change things: the commands only the operator's CLI (and a NIC's own host) may send.

Reading (stats, flows, trace) is open to every connection the transport admits; a command that
changes the cluster (a fault, a migrate, a team policy, a cable or port, a capture of traffic)
is taken only from the CLI (its connections speak as ``ctl-...``, on tcp with the CLI's own
key) or from the hosts the guard is given (a NIC's own host: another host's key is not the
operator of this one's NICs). Anything else is refused by the node before the daemon sees it,
counted and logged as ``bus.auth.denied``. Names are bound to keys on tcp (``bus.curve``); on
ipc the run directory's permissions already say every speaker is the cluster's own user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from bus.curve import CLI
from bus.messages import ControlRequest, Fault, Message

MUTATING: Final = frozenset(
    {
        "fault",
        "migrate",
        "team-policy",
        "link-down",
        "link-up",
        "port-down",
        "port-up",
        "capture-start",
        "capture-read",
        "capture-stop",
    }
)

Guard = Callable[[str, Message], str | None]


def operator_only(hosts: Iterable[str]) -> Guard:
    """A node guard that takes changing commands only from the CLI and the ``hosts``."""
    trusted = frozenset(hosts)

    def guard(peer: str, msg: Message) -> str | None:
        if isinstance(msg, ControlRequest):
            if msg.cmd not in MUTATING:
                return None
            what = msg.cmd
        elif isinstance(msg, Fault):
            what = "fault"
        else:
            return None
        if peer in trusted or peer.startswith(f"{CLI}-"):
            return None
        return f"command.{what}"

    return guard
