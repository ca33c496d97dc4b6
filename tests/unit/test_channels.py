"""A private channel that carries one half (heartbeats or data) but not the other is seen."""

from __future__ import annotations

from nicd.channels import STALE_S, Channel, ChannelHealth


def test_heartbeats_with_a_copy_that_stays_behind_are_no_data() -> None:
    ch = ChannelHealth(["nic2"])
    ch.heartbeat("nic2", behind=True, now=10.0)
    assert ch.state("nic2", 10.5) is Channel.OK  # a lost batch is asked for again first
    ch.heartbeat("nic2", behind=True, now=10.0 + STALE_S)
    assert ch.state("nic2", 10.0 + STALE_S) is Channel.NO_DATA
    ch.heartbeat("nic2", behind=False, now=11.5)  # the resend arrived
    assert ch.state("nic2", 11.5) is Channel.OK


def test_data_without_heartbeats_and_silence_are_told_apart() -> None:
    ch = ChannelHealth(["nic2", "nic3"])
    ch.heartbeat("nic2", behind=False, now=1.0)
    ch.data("nic2", 5.0)
    assert ch.state("nic2", 5.2) is Channel.NO_HEARTBEATS
    assert ch.state("nic2", 5.0 + STALE_S) is Channel.SILENT
    assert ch.states(6.0) == {"nic2": "silent", "nic3": "silent"}
    ch.data("nic9", 6.0)  # not a sibling: ignored
