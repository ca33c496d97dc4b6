"""A datapath's settings (sizes, timeouts, team switches) and its datapath-wide counters."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from nicd.datapath.conntrack import Timeouts
from nicd.datapath.eswitch import DEFAULT_ESWITCH_CAPACITY
from nicd.datapath.flowcache import DEFAULT_CACHE_CAPACITY


@dataclass(slots=True)
class DatapathConfig:
    """Sizes and switches of one NIC's datapath."""

    eswitch_capacity: int = DEFAULT_ESWITCH_CAPACITY
    cache_capacity: int = DEFAULT_CACHE_CAPACITY
    cache_enabled: bool = True
    ct_limit: int = 262_144
    timeouts: Timeouts = field(default_factory=Timeouts)
    rebalance_swaps: int = 64
    failback: bool = True  # active-backup: the first uplink takes back over when it returns
    uplink_bps: float = 1e10  # load-based: each uplink's capacity ...
    load_threshold: float = 0.75  # ... and the share of it that counts as overloaded


@dataclass(slots=True)
class PipelineStats:
    """Datapath-wide counters; drops by reason (dotted codes)."""

    frames_in: int = 0
    slow_path: int = 0  # frames no fast tier decided
    forwarded: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    handover_sent: Counter[str] = field(default_factory=Counter)
    handover_received: Counter[str] = field(default_factory=Counter)
    remap_flows_kept: int = 0
    revalidated: int = 0
    revalidate_removed: int = 0
    announcements: int = 0
    team_moves: int = 0  # VPIDs load-based teaming moved to another uplink
