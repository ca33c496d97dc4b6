"""The embedded hardware switch (third tier): a fixed-size exact-match table of `hw_ok` paths.

When it is full, paths that may go to hardware wait in the flow cache. Like OVS
`offload-rebalance`, `rebalance` periodically swaps the least busy hardware entries for the
busiest waiting ones, so the scarce table holds the traffic that matters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from nicd.datapath.tiers import ExactMatchTable, FastKey, PathEntry, Tier

DEFAULT_ESWITCH_CAPACITY = 4096


@dataclass(slots=True)
class ESwitch(ExactMatchTable):
    """Hardware table of `capacity` path entries; forward and count only."""

    tier: Tier = Tier.ESWITCH
    capacity: int = DEFAULT_ESWITCH_CAPACITY
    swaps: int = 0

    def rebalance(
        self,
        rates: Mapping[FastKey, float],
        waiting: list[tuple[float, FastKey, PathEntry]],
        max_swaps: int,
    ) -> list[tuple[PathEntry, PathEntry]]:
        """Swap idle hardware entries for busier waiting ones; returns (evicted, installed).

        `rates` is packets/s by key for entries here (absent means idle); `waiting` holds
        (rate, key, entry) of hardware-eligible entries that did not fit.
        """
        if not waiting or max_swaps <= 0:
            return []
        installed = sorted(self.entries, key=lambda k: rates.get(k, 0.0))
        busiest = sorted(waiting, key=lambda item: item[0], reverse=True)
        swaps: list[tuple[PathEntry, PathEntry]] = []
        for (rate, key, entry), victim in zip(busiest, installed, strict=False):
            if len(swaps) >= max_swaps or rate <= rates.get(victim, 0.0):
                break
            old = self.entries[victim]
            self.evict(victim)
            self.install(key, entry)
            swaps.append((old, entry))
        self.swaps += len(swaps)
        return swaps
