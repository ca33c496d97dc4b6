"""One `Malformed` base for every "bad input from outside" error, each with a dotted reason."""

from __future__ import annotations

import pytest

from bus.codec import MalformedMessage
from bus.messages import InvalidField
from bus.policy import PolicyError, policy_from_plain_untrusted
from hoststack.traffic import BadMessage, decode_datagram_untrusted
from wire.frames import MalformedFrame, parse_frame_untrusted
from wire.malformed import Malformed


@pytest.mark.parametrize(
    "exc",
    [
        MalformedFrame("eth.short"),
        MalformedMessage("msgpack"),
        InvalidField("policy", "must be a dict"),
        PolicyError("rules[0].dport", "inverted range 2-1"),
        BadMessage("app.short"),
    ],
)
def test_every_bad_input_error_is_malformed_with_a_reason(exc: Malformed) -> None:
    assert isinstance(exc, Malformed)
    assert exc.reason and " " not in exc.reason


def test_decoders_raise_malformed() -> None:
    with pytest.raises(Malformed):
        parse_frame_untrusted(b"\x00")
    with pytest.raises(Malformed):
        decode_datagram_untrusted(b"")
    with pytest.raises(Malformed) as info:
        policy_from_plain_untrusted({"segments": []})
    assert str(info.value).startswith("policy.")


def test_policy_error_names_the_field() -> None:
    e = PolicyError("rules[3].dport", "inverted range 2-1")
    assert str(e) == "rules[3].dport: inverted range 2-1"
    assert (e.reason, e.field, e.why) == ("policy", "rules[3].dport", "inverted range 2-1")
