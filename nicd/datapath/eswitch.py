"""The embedded hardware switch (third tier): a fixed-size exact-match table of `hw_ok` flows.

When it is full, flows that may go to hardware wait in the flow cache. Like OVS
`offload-rebalance`, `rebalance` periodically swaps the least busy hardware flows for the
busiest waiting ones, so the scarce table holds the traffic that matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nicd.datapath.conntrack import CtRecord
from nicd.datapath.tiers import ExactMatchTable, Tier

DEFAULT_ESWITCH_CAPACITY = 4096


@dataclass(slots=True)
class ESwitch(ExactMatchTable):
    """Hardware table of `capacity` entries (two per connection); forward and count only."""

    tier: Tier = Tier.ESWITCH
    capacity: int = DEFAULT_ESWITCH_CAPACITY
    swaps: int = 0

    def rebalance(
        self, hw_rates: Mapping[int, float], waiting: list[tuple[float, CtRecord]], max_swaps: int,
        now: float,
    ) -> list[tuple[CtRecord, CtRecord]]:
        """Swap idle hardware flows for busier waiting ones; returns (evicted, installed) pairs.

        `hw_rates` is packets per second by `id(record)` for records read back this period
        (an installed record absent from it counts as idle); `waiting` is (rate, record).
        """
        if not waiting or max_swaps <= 0:
            return []
        installed = sorted(self.records(), key=lambda r: hw_rates.get(id(r), 0.0))
        busiest = sorted(waiting, key=lambda item: item[0], reverse=True)
        swaps: list[tuple[CtRecord, CtRecord]] = []
        for (rate, newcomer), victim in zip(busiest, installed, strict=False):
            if len(swaps) >= max_swaps or rate <= hw_rates.get(id(victim), 0.0):
                break
            self.evict(victim)
            if self.install(newcomer, now):
                swaps.append((victim, newcomer))
        self.swaps += len(swaps)
        return swaps
