"""The health of each private channel to a sibling, as this NIC sees it; sans-I/O.

A channel can fail by halves: heartbeats arrive while the replication stream does not (a
second connection took the sibling's route on one side, a queue that drops big messages), or
data arrives while heartbeats do not. Either half alone looks healthy to the checks that use
it, so this compares them. Inputs: a heartbeat heard (with whether our copy of the sibling's
stream is behind the sequence number it announces) and data received (a sync batch or a
handover), each with `now`; `state(peer, now)` is one of the `Channel` values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

STALE_S = 1.0  # a half silent, or a copy behind, this long while the other half works


class Channel(enum.Enum):
    """What a sibling's channel carries, as far as we can tell."""

    OK = "ok"
    NO_DATA = "no-data"  # heartbeats arrive, yet our copy of its stream stays behind
    NO_HEARTBEATS = "no-heartbeats"  # its data arrives, its heartbeats do not
    SILENT = "silent"  # nothing from it (down, or a partition)


@dataclass(slots=True)
class _Seen:
    heartbeat: float = float("-inf")
    data: float = float("-inf")
    behind_since: float | None = None


class ChannelHealth:
    """Per-sibling channel health from what arrives and when."""

    def __init__(self, siblings: list[str], stale_s: float = STALE_S) -> None:
        self.stale_s = stale_s
        self._seen = {sib: _Seen() for sib in siblings}

    def heartbeat(self, peer: str, behind: bool, now: float) -> None:
        """A heartbeat from `peer`; `behind`: our copy holds less than it says it sent."""
        seen = self._seen.get(peer)
        if seen is None:
            return
        seen.heartbeat = now
        if not behind:
            seen.behind_since = None
        elif seen.behind_since is None:
            seen.behind_since = now

    def data(self, peer: str, now: float) -> None:
        """A sync batch or a handover from `peer`."""
        seen = self._seen.get(peer)
        if seen is not None:
            seen.data = now

    def state(self, peer: str, now: float) -> Channel:
        """The channel's state at `now`."""
        seen = self._seen[peer]
        beating = now - seen.heartbeat < self.stale_s
        if beating:
            behind = seen.behind_since is not None and now - seen.behind_since >= self.stale_s
            return Channel.NO_DATA if behind else Channel.OK
        if now - seen.data < self.stale_s:
            return Channel.NO_HEARTBEATS
        return Channel.SILENT

    def states(self, now: float) -> dict[str, str]:
        """Every sibling's channel state, by name."""
        return {peer: self.state(peer, now).value for peer in self._seen}
