"""The datapath's emitted frames grouped per destination, one bus message each. Sans-I/O."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from bus.messages import HandoverKind
from nicd.datapath.pipeline import Emit, PortKind

Frames = list[tuple[int, bytes]]


@dataclass(slots=True)
class Outgoing:
    """Frames for the host's VF channel, the fabric's uplinks and each sibling (per kind)."""

    to_host: Frames = field(default_factory=list)
    to_fabric: Frames = field(default_factory=list)
    handovers: defaultdict[tuple[str, HandoverKind], Frames] = field(
        default_factory=lambda: defaultdict(list)
    )


def group(emits: list[Emit]) -> Outgoing:
    """Sort `emits` by destination, in order."""
    out = Outgoing()
    for e in emits:
        if e.out is PortKind.VF:
            out.to_host.append((e.target, e.frame))
        elif e.out is PortKind.UPLINK:
            out.to_fabric.append((e.target, e.frame))
        elif e.out is PortKind.PEER_DELIVER:
            out.handovers[(e.nic, HandoverKind.DELIVER)].append((e.target, e.frame))
        else:
            out.handovers[(e.nic, HandoverKind.TRANSMIT)].append((e.target, e.frame))
    return out
