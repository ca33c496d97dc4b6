"""`nicteam verify`'s comparison: digests count only at a consistent cut; a difference fails."""

from __future__ import annotations

from typing import Any

import pytest

from configs import load_default
from ctl import verify as v


def answer(seq: int, digest: str, held: int, copy: str) -> dict[str, Any]:
    return {"seq": seq, "digest": digest, "records": 3,
            "peers": {"x": {"held": held, "digest": copy, "records": 3}}}  # fmt: skip


def compare(origin: dict[str, Any], holder: dict[str, Any]) -> str:
    holder = dict(holder, peers={"nic1": holder["peers"]["x"]})
    return v._compare("h1", "nic1", "nic2", {"nic1": origin, "nic2": holder}).status


def test_a_pair_is_judged_only_when_the_copy_holds_the_origins_sequence() -> None:
    assert compare(answer(7, "a", 0, ""), answer(0, "", 7, "a")) == "match"
    assert compare(answer(7, "a", 0, ""), answer(0, "", 7, "b")) == "differs"
    assert compare(answer(8, "a", 0, ""), answer(0, "", 7, "b")) == "behind"
    assert v._compare("h1", "nic1", "nic2", {"nic1": None, "nic2": None}).status == "down"


def test_verify_fails_on_a_difference_even_if_a_later_round_matches(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_default(tmp_path)
    rounds = iter([["differs"], ["match"]])

    def pairs_now(_: object) -> list[v.Pair]:
        return [v.Pair("h1", "nic1", "nic2", s) for s in next(rounds, ["match"])]

    monkeypatch.setattr(v, "pairs_now", pairs_now)
    ok, pairs = v.verify(config, wait_s=0.5, every_s=0.01)
    assert not ok and pairs[0].status == "differs"


def test_verify_waits_for_a_copy_that_is_behind(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_default(tmp_path)
    rounds = iter([["behind"], ["behind"], ["match"]])
    monkeypatch.setattr(v, "pairs_now", lambda _: [v.Pair("h1", "nic1", "nic2", s)
                                                   for s in next(rounds, ["behind"])])  # fmt: skip
    assert v.verify(config, wait_s=5, every_s=0.01)[0]
    rounds = iter([])
    assert not v.verify(config, wait_s=0.05, every_s=0.01)[0]  # never caught up


def test_verify_fails_while_a_copy_that_once_matched_stays_behind(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The "nic3->nic1 behind seq 8 held 7" for good: a match at 7 earlier must not
    # make verify agree while the copy never reaches 8.
    config = load_default(tmp_path)
    rounds = iter([("match", 7, 7)])
    monkeypatch.setattr(v, "pairs_now", lambda _: [v.Pair("h1", "nic3", "nic1", *next(
        rounds, ("behind", 8, 7)))])  # fmt: skip
    ok, pairs = v.verify(config, wait_s=0.1, every_s=0.01)
    assert not ok and (pairs[0].status, pairs[0].seq, pairs[0].held) == ("behind", 8, 7)
    rounds = iter([("match", 7, 7), ("behind", 8, 7), ("behind", 9, 8)])  # it catches up
    assert v.verify(config, wait_s=1.0, every_s=0.01)[0]
