"""Sans-I/O fault injection: which messages to and from a peer to drop or delay, and by how much.

A node consults ``decide(peer, now)`` for every message it sends to ``peer`` and every message it
receives from ``peer``. Partition and drop therefore act on both directions of the channel as
seen from this node; a delay is applied only to what this node sends (the receive side ignores
``delay_s``), so a round trip through one delayed node is delayed once. ``until`` is an absolute
time on the caller's clock (``math.inf`` = until cleared); the peer ``ANY`` matches every peer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from bus.messages import Fault, FaultKind

ANY: Final = "*"


@dataclass(frozen=True, slots=True)
class _Rule:
    until: float
    value: float  # drop probability, or delay in seconds; unused for a partition


class FaultTable:
    """Active faults per peer; time is always an argument, randomness an injectable ``rng``."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._rules: dict[FaultKind, dict[str, _Rule]] = {
            FaultKind.PARTITION: {},
            FaultKind.DROP: {},
            FaultKind.DELAY: {},
        }

    @property
    def active(self) -> bool:
        """True when any fault may still apply (checked first so the no-fault path is cheap)."""
        return any(self._rules.values())

    def partition(self, peer: str, until: float = math.inf) -> None:
        """Cut the channel with ``peer`` in both directions until ``until``."""
        self._rules[FaultKind.PARTITION][peer] = _Rule(until, 0.0)

    def drop(self, peer: str, probability: float, until: float = math.inf) -> None:
        """Drop each message to or from ``peer`` with ``probability`` until ``until``."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be in 0..1")
        self._rules[FaultKind.DROP][peer] = _Rule(until, probability)

    def delay(self, peer: str, seconds: float, until: float = math.inf) -> None:
        """Hold each message sent to ``peer`` for ``seconds`` (order kept) until ``until``."""
        if not seconds >= 0.0:
            raise ValueError("delay must be >= 0")
        self._rules[FaultKind.DELAY][peer] = _Rule(until, seconds)

    def clear(self, peer: str) -> None:
        """Remove every fault on ``peer`` (``ANY`` clears all faults on all peers)."""
        for rules in self._rules.values():
            if peer == ANY:
                rules.clear()
            else:
                rules.pop(peer, None)

    def apply(self, fault: Fault, now: float) -> None:
        """Apply a ``Fault`` bus command; its ``seconds`` count from ``now``."""
        until = now + fault.seconds
        if fault.kind is FaultKind.PARTITION:
            self.partition(fault.peer, until)
        elif fault.kind is FaultKind.DROP:
            self.drop(fault.peer, fault.probability, until)
        elif fault.kind is FaultKind.DELAY:
            self.delay(fault.peer, fault.delay, until)
        else:
            self.clear(fault.peer)

    def decide(self, peer: str, now: float) -> tuple[bool, float]:
        """Return (deliver, delay_s) for one message to or from ``peer`` at ``now``."""
        if self._rule(FaultKind.PARTITION, peer, now) is not None:
            return False, 0.0
        drop = self._rule(FaultKind.DROP, peer, now)
        if drop is not None and self._rng.random() < drop.value:
            return False, 0.0
        delay = self._rule(FaultKind.DELAY, peer, now)
        return True, (delay.value if delay is not None else 0.0)

    def snapshot(self, now: float) -> list[tuple[str, str, float, float]]:
        """Active faults as (kind, peer, value, seconds left), for status output."""
        out = [
            (kind.value, peer, rule.value, rule.until - now)
            for kind, rules in self._rules.items()
            for peer, rule in rules.items()
            if now < rule.until
        ]
        return sorted(out)

    def _rule(self, kind: FaultKind, peer: str, now: float) -> _Rule | None:
        # A rule for the peer itself wins over the ANY rule; expired rules are forgotten here.
        rules = self._rules[kind]
        for key in (peer, ANY):
            rule = rules.get(key)
            if rule is None:
                continue
            if now < rule.until:
                return rule
            del rules[key]
        return None
