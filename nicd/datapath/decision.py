"""What the pipeline decides about a frame: the kinds of port, the verdict, the frames to emit.

A frame enters by one kind of port and each copy it becomes leaves by one (`PortKind`): the
same four kinds both ways, since a port is a port whichever way a frame crosses it. The
fast-tier entry of a path stores its emits as `PathAction`s (where to, VLAN push or pop);
`path_actions` and `path_emits` convert between the two.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from nicd.datapath.conntrack import CtRecord
from nicd.datapath.tiers import PathAction, PathEntry, Tier
from wire.protocols import ETH_VLAN


class PortKind(enum.IntEnum):
    """A kind of port of this NIC; `port` numbers a PPID, PPID, VPID, PPID respectively.

    In: from a VM, from the fabric, a sibling delivering to a VPID homed here, a sibling asking
    us to transmit on our uplink. Out: to a VM, to the fabric, a VPID homed on a sibling, a
    sibling's uplink (the transmit-only handover).
    """

    VF = 0
    UPLINK = 1
    PEER_DELIVER = 2
    PEER_TRANSMIT = 3


HANDOVER_NAMES: dict[int, str] = {
    PortKind.PEER_DELIVER: "peer_deliver",
    PortKind.PEER_TRANSMIT: "peer_transmit",
}


class Verdict(enum.IntEnum):
    """What became of the frame that entered."""

    FORWARD = 0
    DROP = 1


@dataclass(slots=True)
class Emit:
    """A frame to send: `target` is a PPID here (VF, UPLINK), a VPID or PPID on `nic`."""

    out: PortKind
    target: int
    frame: bytes
    nic: str = ""


@dataclass(slots=True)
class Decision:
    """The fate of one input frame: verdict, the tier and rule that decided, frames to emit."""

    verdict: Verdict
    tier: Tier | None = None  # the slowest tier of the stages that ran; None if none ran
    reason: str = ""
    rule: str = ""
    emits: list[Emit] = field(default_factory=list)
    records: tuple[CtRecord, ...] = ()


def path_emits(entry: PathEntry, frame: bytes) -> list[Emit]:
    """The frames a fast-tier entry emits for `frame` (its VLAN pushed or popped per action)."""
    emits = []
    for a in entry.actions:
        vlan = a.vlan
        if vlan is None:
            f = frame
        elif vlan == 0:
            f = untag(frame)
        else:
            f = tag(frame, vlan)
        emits.append(Emit(a.out, a.target, f, a.nic))  # type: ignore[arg-type]
    return emits


def path_actions(frame: bytes, emits: Sequence[Emit]) -> tuple[PathAction, ...] | None:
    """The emits as fast-tier actions, or None if one is more than a VLAN push or pop."""
    actions = []
    for e in emits:
        vlan = vlan_op(frame, e.frame)
        if vlan == -1:
            return None
        actions.append(PathAction(e.out, e.target, e.nic, vlan))
    return tuple(actions)


def tag(frame: bytes, vlan: int | None) -> bytes:
    """`frame` with an 802.1Q tag `vlan` pushed (unchanged for None)."""
    if vlan is None:
        return frame
    return (
        frame[:12] + ETH_VLAN.to_bytes(2, "big") + (vlan & 0x0FFF).to_bytes(2, "big") + frame[12:]
    )


def untag(frame: bytes) -> bytes:
    """`frame` with its 802.1Q tag popped."""
    return frame[:12] + frame[16:]


def vlan_op(frame: bytes, out: bytes) -> int | None:
    """How `out` derives from `frame`: None kept, 0 tag popped, N tag N pushed, -1 otherwise."""
    if out is frame or out == frame:
        return None
    if len(out) == len(frame) + 4 and out == tag(frame, int.from_bytes(out[14:16]) & 0x0FFF):
        return int.from_bytes(out[14:16]) & 0x0FFF
    if len(out) + 4 == len(frame) and out == untag(frame):
        return 0
    return -1
