"""`nicteam verify`: every NIC's conntrack against each sibling's replicated copy of it.

Each NIC answers `digest` with its own table's digest and sequence number, and, for every
sibling, how far it holds that sibling's stream and the digest of its copy. A pair (origin,
holder) is compared only at a consistent cut, when the holder holds exactly the origin's
sequence number: then the two digests must be equal. Traffic keeps changing the tables, so
verify asks again until every pair matched at a cut or the wait runs out.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from configs import Config
from ctl.client import ControlError, request


@dataclass(slots=True)
class Pair:
    """One origin's table against one sibling's copy of it."""

    host: str
    origin: str
    holder: str
    status: str  # match, differs, behind (no consistent cut yet), down
    seq: int = 0
    held: int = 0
    records: int = 0
    copy_records: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def pairs_now(config: Config) -> list[Pair]:
    """One round: ask every NIC for its digests and compare every (origin, holder) pair."""
    answers: dict[str, dict[str, Any] | None] = {}
    for nic in config.nics:
        try:
            answers[nic.name] = request(config, nic.name, "digest", timeout=2.0)
        except ControlError:
            answers[nic.name] = None
    out = []
    for host in config.hosts:
        names = [n.name for n in host.nics]
        for origin in names:
            for holder in names:
                if holder != origin:
                    out.append(_compare(host.name, origin, holder, answers))
    return out


def _compare(host: str, origin: str, holder: str, answers: dict[str, Any]) -> Pair:
    mine, theirs = answers.get(origin), answers.get(holder)
    if mine is None or theirs is None:
        return Pair(host, origin, holder, "down")
    copy = theirs["peers"][origin]
    pair = Pair(host, origin, holder, "behind", mine["seq"], copy["held"], mine["records"],
                copy["records"])  # fmt: skip
    if copy["held"] == mine["seq"]:
        pair.status = "match" if copy["digest"] == mine["digest"] else "differs"
    return pair


def verify(config: Config, wait_s: float, every_s: float = 0.1) -> tuple[bool, list[Pair]]:
    """Compare until every pair matched at a consistent cut and every copy then caught up
    with where its origin was (True), or `wait_s` is over."""
    deadline = time.monotonic() + wait_s
    ok, pairs = _settle(config, deadline, every_s)
    if not ok:
        return ok, pairs
    # A pair that matched once may have stopped following since (a lost batch on a quiet
    # stream, a channel that carries heartbeats but no data): every copy must still reach the
    # sequence number its origin had once all pairs matched, or it is behind for good.
    target = {(p.origin, p.holder): p.seq for p in pairs_now(config)}
    while True:
        now = pairs_now(config)
        lagging = [p for p in now if p.status == "down" or p.held < target[(p.origin, p.holder)]]
        if not lagging:
            return True, pairs
        if time.monotonic() >= deadline:
            lag = {(p.origin, p.holder) for p in lagging}
            return False, [p for p in now if (p.origin, p.holder) in lag] + [
                p for p in pairs if (p.origin, p.holder) not in lag
            ]
        time.sleep(every_s)


def _settle(config: Config, deadline: float, every_s: float) -> tuple[bool, list[Pair]]:
    """Compare until every pair matched at a consistent cut (True) or the deadline passed."""
    settled: dict[tuple[str, str], Pair] = {}
    while True:
        pairs = pairs_now(config)
        for p in pairs:
            # Compared at a cut, a pair is settled: a match that lags later only saw new
            # traffic, and a difference at equal sequence numbers is a divergence for good.
            if p.status == "differs":
                return False, [
                    q if q.status == "differs" else settled.get((q.origin, q.holder), q)
                    for q in pairs
                ]
            if p.status == "match":
                settled[(p.origin, p.holder)] = p
        result = [settled.get((p.origin, p.holder), p) for p in pairs]
        if all(p.status == "match" for p in result) or time.monotonic() >= deadline:
            return all(p.status == "match" for p in result), result
        time.sleep(every_s)


def format_pairs(pairs: list[Pair]) -> str:
    """A table of the pairs, one line each."""
    head = f"{'host':<6} {'origin':<8} {'copy at':<8} {'status':<8} {'seq':>8} {'held':>8} "
    head += f"{'records':>8} {'copy':>8}"
    lines = [head]
    for p in pairs:
        lines.append(
            f"{p.host:<6} {p.origin:<8} {p.holder:<8} {p.status:<8} {p.seq:>8} {p.held:>8} "
            f"{p.records:>8} {p.copy_records:>8}"
        )
    return "\n".join(lines)
