"""Bus codec: every message type round-trips, and only MalformedMessage escapes on bad input."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bus.codec import MAX_MESSAGE_BYTES, MalformedMessage, decode_untrusted, encode
from bus.messages import (
    MAX_FRAME,
    MAX_FRAMES_PER_BATCH,
    MESSAGE_TYPES,
    TYPE_CODES,
    VERSION,
    ControlReply,
    ControlRequest,
    Fault,
    FaultKind,
    FrameBatch,
    Handover,
    HandoverKind,
    Heartbeat,
    Hello,
    InvalidField,
    LinkState,
    MapUpdate,
    Message,
    PolicyUpdate,
    Probe,
    SyncAck,
    SyncBatch,
    SyncRequest,
)
from bus.nicstate import NicState
from bus.policy import (
    ActionName,
    DirectionName,
    InterfaceSpec,
    NicUplinks,
    Policy,
    RuleSpec,
    SegmentSpec,
    TeamPolicyName,
)

# -- strategies ---------------------------------------------------------------------------------

names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
frames = st.lists(st.tuples(u32, st.binary(max_size=96)), max_size=40)
seconds = st.floats(0, 1e6, allow_nan=False)


def plain(floats: bool) -> st.SearchStrategy[object]:
    scalars: st.SearchStrategy[object] = (
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    )
    if floats:
        scalars |= st.floats(allow_nan=False, allow_infinity=False)
    keys = st.text(max_size=6)
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=20,
    )


def plain_dict(floats: bool) -> st.SearchStrategy[dict[str, object]]:
    return st.dictionaries(st.text(max_size=6), plain(floats), max_size=5)


def small_policy(team: TeamPolicyName = TeamPolicyName.PORT_ID, failback: bool = True) -> Policy:
    """A policy with one of everything."""
    return Policy(
        segments=(SegmentSpec("web", 10), SegmentSpec("db")),
        interfaces=(InterfaceSpec(7, "vm1", b"\x02\x00\x00\x00\x00\x01",
                                  (ip_address("10.0.0.1"), ip_address("fd00::1")), "web"),),
        rules=(
            RuleSpec("http", ActionName.ALLOW, 10, direction=DirectionName.TO_VM, proto=6,
                     dport=(80, 443), dst=ip_network("10.0.0.0/24"), sw_only=True),
            RuleSpec("deny", ActionName.REJECT, segment="db"),
        ),
        firewall_default=ActionName.DROP,
        team_policy=team,
        failback=failback,
        uplink_bps=10**10,
        load_threshold_pct=75,
        nics=(NicUplinks("nic1", ("p0", "p1")), NicUplinks("nic2", ("p0",))),
        timeouts_ms={"udp_first": 250},
    )  # fmt: skip


MESSAGES: dict[type, st.SearchStrategy[Message]] = {
    Hello: st.builds(Hello, names, names),
    FrameBatch: st.builds(FrameBatch, names, frames),
    Handover: st.builds(Handover, names, st.sampled_from(HandoverKind), frames),
    Heartbeat: st.builds(
        Heartbeat,
        names,
        u64,
        u64,
        st.sampled_from(NicState),
        st.lists(u32, max_size=4),
        st.lists(st.tuples(u32, u32, u64), max_size=4).map(lambda t: [x for r in t for x in r]),
        u64,
        u64,
        u64,
    ),
    Probe: st.builds(Probe, names, u64, st.booleans()),
    LinkState: st.builds(LinkState, names, u32, st.booleans()),
    SyncBatch: st.builds(
        SyncBatch,
        names,
        u64,
        st.lists(st.lists(st.integers(0, 2**32), max_size=4), max_size=4),
        st.booleans(),
    ),
    SyncAck: st.builds(SyncAck, names, u64),
    SyncRequest: st.builds(SyncRequest, names, u64),
    MapUpdate: st.builds(MapUpdate, u64, st.lists(st.tuples(u32, names, u32), max_size=10)),
    PolicyUpdate: st.builds(
        PolicyUpdate, u64, st.builds(small_policy, st.sampled_from(TeamPolicyName), st.booleans())
    ),
    ControlRequest: st.builds(ControlRequest, u64, names, plain_dict(floats=True)),
    ControlReply: st.builds(ControlReply, u64, st.booleans(), plain_dict(floats=True), st.text()),
    Fault: st.builds(Fault, st.sampled_from(FaultKind), names, seconds, st.floats(0, 1), seconds),
}
any_message = st.one_of(*MESSAGES.values())


def test_every_message_type_has_a_strategy_and_a_unique_code() -> None:
    assert set(MESSAGES) == set(MESSAGE_TYPES.values())
    assert len(TYPE_CODES) == len(MESSAGE_TYPES)


EXAMPLES: list[Message] = [
    Hello("nic1", "nic"),
    FrameBatch("h1", [(7, b"\x02" * 60), (8, b"")]),
    Handover("nic1", HandoverKind.TRANSMIT, [(1, b"frame")]),
    Handover("nic2", HandoverKind.DELIVER, []),
    Heartbeat("nic2", 41, 3, NicState.UP),
    Heartbeat("nic1", 42, 3, NicState.UP, [2], [0, 7, 125_000]),
    Heartbeat("nic1", 43, 3, NicState.UP, [], [], 2**62, 17, 4),
    Probe("h1", 3),
    Probe("h1", 4, want_map=True),
    LinkState("fabricd", 2, False),
    SyncBatch("nic1", 7, [[1, 0, "ESTABLISHED", True, 1.5], [2, 3]], reset=True),
    SyncAck("nic2", 8),
    SyncRequest("nic2", 0),
    MapUpdate(4, [(1, "nic1", 0), (2, "nic2", 1)]),
    PolicyUpdate(2, small_policy()),
    ControlRequest(9, "status", {"verbose": True, "rate": 0.5}),
    ControlReply(9, False, {}, "no such nic"),
    Fault(FaultKind.DELAY, "nic2", 2.5, delay=0.01),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_examples(msg: Message) -> None:
    data = encode(msg)
    assert decode_untrusted(data) == msg
    assert msgpack.unpackb(data)[:2] == [VERSION, TYPE_CODES[type(msg)]]


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip_every_type(cls: type, data: st.DataObject) -> None:
    msg = data.draw(MESSAGES[cls])
    assert decode_untrusted(encode(msg)) == msg


def test_decoded_enums_are_enums() -> None:
    handover = decode_untrusted(encode(Handover("n", HandoverKind.DELIVER, [])))
    assert isinstance(handover, Handover) and handover.kind is HandoverKind.DELIVER
    fault = decode_untrusted(encode(Fault(FaultKind.PARTITION, "n", 1)))
    assert isinstance(fault, Fault) and fault.kind is FaultKind.PARTITION
    assert fault.seconds == 1.0 and isinstance(fault.seconds, float)


def test_frame_batch_flat_wire_form() -> None:
    # The hot path: frames travel as one flat array, not one array per frame.
    wire = msgpack.unpackb(encode(FrameBatch("h1", [(1, b"a"), (2, b"b")])))
    assert wire == [VERSION, TYPE_CODES[FrameBatch], "h1", [1, b"a", 2, b"b"]]


# -- construction validates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Hello("", "nic"), "name"),
        (lambda: Hello("\x00id", "nic"), "name"),
        (lambda: Hello("x" * 256, "nic"), "name"),
        (lambda: FrameBatch("h", [(1, "text")]), "frames"),  # type: ignore[list-item]
        (lambda: FrameBatch("h", [(1, bytearray(b"x"))]), "frames"),  # type: ignore[list-item]
        (lambda: FrameBatch("h", [(True, b"x")]), "frames"),
        (lambda: FrameBatch("h", [(-1, b"x")]), "frames"),
        (lambda: FrameBatch("h", [(2**32, b"x")]), "frames"),
        (lambda: FrameBatch("h", [[1, b"x"]]), "frames"),  # type: ignore[list-item]
        (lambda: FrameBatch("h", [(1, b"x", 2)]), "frames"),  # type: ignore[list-item]
        (lambda: FrameBatch("h", ((1, b"x"),)), "frames"),  # type: ignore[arg-type]
        (lambda: FrameBatch("h", [(1, bytes(MAX_FRAME + 1))]), "frames"),
        (lambda: FrameBatch("h", [(1, b"")] * (MAX_FRAMES_PER_BATCH + 1)), "frames"),
        (lambda: Handover("n", 3, []), "kind"),  # type: ignore[arg-type]
        (lambda: Handover("n", True, []), "kind"),  # type: ignore[arg-type]
        (lambda: Heartbeat("n", -1, 0, NicState.UP), "seq"),
        (lambda: Heartbeat("n", 1, 1.0, NicState.UP), "epoch"),  # type: ignore[arg-type]
        (lambda: Heartbeat("n", 1, 1, NicState.UP, [-1]), "links_down"),
        (lambda: Heartbeat("n", 1, 1, "sleeping"), "state"),  # type: ignore[arg-type]
        (lambda: Heartbeat("n", 1, 1, NicState.UP, (1,)), "links_down"),  # type: ignore[arg-type]
        (lambda: Heartbeat("n", 1, 1, NicState.UP, [], [0, 7]), "vpid_load"),
        (lambda: LinkState("f", 1, 1), "up"),  # type: ignore[arg-type]
        (lambda: SyncBatch("n", 1, [1]), "changes"),  # type: ignore[list-item]
        (lambda: SyncBatch("n", 1, [[b"x"]]), "changes"),
        (lambda: MapUpdate(1, [(1, "nic1")]), "entries"),  # type: ignore[list-item]
        (lambda: MapUpdate(1, [(1, "", 2)]), "entries"),
        (lambda: PolicyUpdate(1, {"a": 1.5}), "policy"),  # type: ignore[arg-type]
        (lambda: PolicyUpdate(1, {"a": (1, 2)}), "policy"),  # type: ignore[arg-type]
        (lambda: PolicyUpdate(1, {1: "a"}), "policy"),  # type: ignore[arg-type]
        (lambda: PolicyUpdate(1, {"a": b"bytes"}), "policy"),  # type: ignore[arg-type]
        (lambda: PolicyUpdate(1, {"a": 2**64}), "policy"),  # type: ignore[arg-type]
        (lambda: ControlRequest(1, "go", {"x": float("nan")}), "args"),
        (lambda: ControlReply(1, 1, {}, ""), "ok"),  # type: ignore[arg-type]
        (lambda: ControlReply(1, True, {}, None), "error"),  # type: ignore[arg-type]
        (lambda: Fault("explode", "n", 1), "kind"),  # type: ignore[arg-type]
        (lambda: Fault(FaultKind.DROP, "n", -1), "seconds"),
        (lambda: Fault(FaultKind.DROP, "n", 1, probability=1.5), "probability"),
        (lambda: Fault(FaultKind.DELAY, "n", 1, delay=float("inf")), "delay"),
    ],
)
def test_construction_rejects(build: object, field: str) -> None:
    with pytest.raises(InvalidField) as info:
        build()  # type: ignore[operator]
    assert info.value.field == field


def test_deep_policy_rejected() -> None:
    deep: dict[str, object] = {}
    for _ in range(40):
        deep = {"d": deep}
    with pytest.raises(InvalidField):
        PolicyUpdate(1, deep)  # type: ignore[arg-type]
    with pytest.raises(MalformedMessage) as info:
        decode_untrusted(msgpack.packb([VERSION, 6, 1, deep]))
    assert info.value.reason == "field.policy"


def test_encode_refuses_oversized_message() -> None:
    big = FrameBatch("h", [(1, bytes(MAX_FRAME))] * (MAX_MESSAGE_BYTES // MAX_FRAME + 1))
    with pytest.raises(ValueError, match="over the limit"):
        encode(big)


# -- untrusted input: one way to fail -----------------------------------------------------------


def wire(*items: object) -> bytes:
    return msgpack.packb(list(items), use_bin_type=True)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "msgpack"),
        (b"\xc1", "msgpack"),  # never-used msgpack byte
        (wire(1, 1, "a", "b") + b"\x00", "msgpack"),  # trailing data
        (msgpack.packb({"a": 1}), "shape"),
        (wire(1), "shape"),
        (wire(2, 1, "a", "b"), "version"),
        (wire(True, 1, "a", "b"), "version"),
        (wire(1, 99, "a"), "type"),
        (wire(1, True, "a", "b"), "type"),
        (wire(1, [1], "a", "b"), "type"),
        (wire(1, 1, "a"), "arity"),
        (wire(1, 1, "a", "b", "c"), "arity"),
        (wire(1, 1, "a", 5), "field.role"),
        (wire(1, 2, "h", [1, b"x", 2]), "field.frames"),  # odd flat list
        (wire(1, 2, "h", [1, "x"]), "field.frames"),  # str, not bin
        (wire(1, 2, "h", [[1, b"x"]]), "field.frames"),
        (wire(1, 2, "h", {"a": 1}), "field.frames"),
        (wire(1, 5, 1, [[1, "nic1"]]), "field.entries"),
        (wire(1, 5, 1, [1, "nic1", 2]), "field.entries"),
        (wire(1, 6, 1, {1: 2}), "msgpack"),  # int map key (strict_map_key)
        (wire(1, 6, 1, {"a": msgpack.ExtType(1, b"x")}), "msgpack"),
        (wire(1, 6, 1, {"a": 1.5}), "field.policy"),
        (wire(1, 6, 1, {"a": 1}), "field.policy"),  # plain, but not a policy
        (wire(1, 6, 1, [1]), "field.policy"),
        (wire(1, 9, "explode", "n", 1.0, 1.0, 0.0), "field.kind"),
    ],
)
def test_malformed_reasons(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_untrusted(data)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xc4" + bytes(MAX_MESSAGE_BYTES), "size"),
        (wire(1, 2, "h", [0] * 65537), "msgpack"),  # array over max_array_len
        (wire(1, 6, 1, {str(i): i for i in range(4097)}), "msgpack"),  # map over max_map_len
        (wire(1, 1, "x" * (1024 * 1024 + 1), "nic"), "msgpack"),  # str over max_str_len
        (wire(1, 2, "h", [1, bytes(16 * 1024 + 1)]), "msgpack"),  # bin over max_bin_len
        (b"\x91" * 5000 + b"\xc0", "msgpack"),  # nested deeper than msgpack's stack
    ],
    ids=["size", "array", "map", "str", "bin", "depth"],
)
def test_oversize_containers_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_untrusted(data)
    assert info.value.reason == reason


def check_only_malformed_escapes(data: bytes) -> None:
    # The fuzz invariant: a bad input raises MalformedMessage; a good one re-encodes the same.
    try:
        msg = decode_untrusted(data)
    except MalformedMessage:
        return
    assert decode_untrusted(encode(msg)) == msg


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
@example(b"\x94\x01\x02\xa1h\x92\x01\xc4\x01x")  # a valid FrameBatch
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_only_malformed_escapes(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(any_message)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[at]
        else:
            del data[at:]
    return bytes(data)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_encodings(data: bytes) -> None:
    check_only_malformed_escapes(data)


packable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=16,
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([VERSION, VERSION]) | packable,
    code=st.sampled_from(list(MESSAGE_TYPES)) | packable,
    fields=st.lists(packable, max_size=6),
)
def test_fuzz_valid_msgpack_bad_fields(version: object, code: object, fields: list) -> None:
    # Valid msgpack, plausible header: this reaches the per-field validators, not just msgpack.
    check_only_malformed_escapes(msgpack.packb([version, code, *fields], use_bin_type=True))


def test_trusted_messages_encode_like_validated_ones() -> None:
    """`trusted` skips validation only: the bytes on the wire are the same."""
    from bus.messages import FrameBatch, Handover, HandoverKind, trusted

    frames = [(1, b"\x00" * 60), (2, b"\x01" * 64)]
    assert encode(trusted(FrameBatch, "nic1", frames)) == encode(FrameBatch("nic1", frames))
    h = trusted(Handover, "nic1", HandoverKind.TRANSMIT, frames)
    assert decode_untrusted(encode(h)) == Handover("nic1", HandoverKind.TRANSMIT, frames)
