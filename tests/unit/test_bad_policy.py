"""What an operator sees when a NIC drops the host's policy: the field at fault, by name.

The policy is checked when its message is decoded; a bad one is a counted `bus.drop.malformed`
(reason `field.policy`) whose `error` names the field (``rules[0].dport: ...``), the operator's
only clue while the NIC keeps waiting for a policy it cannot take.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import MutableMapping
from typing import Any

import msgpack
import pytest
from structlog.testing import capture_logs

from bus.codec import MalformedMessage, decode_untrusted, encode
from bus.messages import Hello, PolicyUpdate
from bus.testing import MemoryNetwork
from configs import DEFAULT_CONFIG, load_config


def _bad_policy_bytes() -> bytes:
    cfg = load_config(DEFAULT_CONFIG)
    good = encode(PolicyUpdate(2, cfg.policy(cfg.hosts[0].name)))
    wire = msgpack.unpackb(good)
    policy = copy.deepcopy(wire[-1])
    policy["rules"][0]["dport"] = [2, 1]
    wire[-1] = policy
    return msgpack.packb(wire)


def test_a_bad_policy_is_a_malformed_message() -> None:
    with pytest.raises(MalformedMessage) as e:
        decode_untrusted(_bad_policy_bytes())
    assert e.value.reason == "field.policy"


def test_the_malformed_policy_says_which_field() -> None:
    with pytest.raises(MalformedMessage) as e:
        decode_untrusted(_bad_policy_bytes())
    assert "rules[0].dport" in str(e.value) or "rules[0].dport" in e.value.detail


def test_the_log_of_a_dropped_policy_names_the_field() -> None:
    async def go() -> list[MutableMapping[str, Any]]:
        net = MemoryNetwork()
        host, nic = net.node("h1"), net.node("nic1")
        await host.start()
        await nic.start()
        host.connect("nic1", nic.endpoint)
        await asyncio.wait_for(host.wait_connected("nic1"), 5)
        with capture_logs() as logs:
            for _ in range(3):  # hostd sends it again at every hello
                host.send_raw("nic1", _bad_policy_bytes())
            host.send("nic1", Hello("h1", "host"))  # one link keeps order: this comes last
            got: list = []
            while not any(isinstance(m, Hello) for _, m in got):
                got += await asyncio.wait_for(nic.recv_batch(16), 5)
        assert [type(m) for _, m in got] == [Hello]  # the three policies dropped at decode
        assert nic.stats.malformed == {"field.policy": 3}
        await host.close()
        await nic.close()
        return logs

    logs = asyncio.run(go())
    drops = [e for e in logs if e["event"] == "bus.drop.malformed"]
    assert [e["reason"] for e in drops] == ["field.policy", "field.policy"]  # 1st and 2nd of 3
    assert all("rules[0].dport" in e["error"] for e in drops)
