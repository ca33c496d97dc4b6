"""The flow-cache firewall (second tier): software exact match on established, `sw_ok` flows."""

from __future__ import annotations

from dataclasses import dataclass

from nicd.datapath.tiers import ExactMatchTable, Tier

DEFAULT_CACHE_CAPACITY = 1 << 20


@dataclass(slots=True)
class FlowCache(ExactMatchTable):
    """Software flow cache: large, and it holds every flow its record marks `sw_ok`."""

    tier: Tier = Tier.CACHE
    capacity: int = DEFAULT_CACHE_CAPACITY
