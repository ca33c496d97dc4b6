"""The one bus codec: ``encode`` a message to a msgpack array, ``decode_untrusted`` it back.

Wire form: ``[VERSION, type_code, *fields]`` in the field order of ``bus.messages``. Decoding
bytes from a peer can raise only ``MalformedMessage``; its ``reason`` ("size", "msgpack",
"shape", "version", "type", "arity", "field.<name>") is what drop counters are keyed by.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from itertools import chain
from typing import Any, Final

import msgpack

from bus.messages import (
    MAX_FRAMES_PER_BATCH,
    MESSAGE_TYPES,
    TYPE_CODES,
    VERSION,
    InvalidField,
    Message,
    Wire,
    check_flat_frames,
    check_plain,
)
from bus.policy import Policy, PolicyError, policy_from_plain_untrusted
from wire.malformed import Malformed

MAX_MESSAGE_BYTES: Final = 8 * 1024 * 1024
# msgpack limits for untrusted input; they bound memory before any of our checks run.
UNPACK_LIMITS: Final[dict[str, Any]] = {
    "use_list": True,
    "raw": False,
    "strict_map_key": True,
    "max_array_len": 2 * MAX_FRAMES_PER_BATCH,  # 65536: a flat batch has 2 items per frame
    "max_map_len": 4096,
    "max_str_len": 1024 * 1024,
    "max_bin_len": 16 * 1024,  # one frame is <= 9216 bytes (jumbo)
    "max_ext_len": 0,  # no ext types (timestamps included) are part of the protocol
}


class MalformedMessage(Malformed):
    """Bytes from a peer that are not a valid bus message; ``reason`` is a short counter key."""


# -- per-field wire conversions (they may raise only InvalidField) ----------------------------


def _pairs_to_wire(pairs: list[tuple[int, bytes]]) -> list[int | bytes]:
    return list(chain.from_iterable(pairs))


def _pairs_from_wire(name: str, flat: object) -> list[tuple[Any, Any]]:
    if type(flat) is not list or len(flat) % 2:
        raise InvalidField(name, "must be a flat list of port, frame pairs")
    # Checked here once, on the wire form; the constructor then skips its own pass.
    return check_flat_frames(name, flat[::2], flat[1::2])


def _tuples_from_wire(name: str, rows: object) -> list[tuple[Any, ...]]:
    if type(rows) is not list or set(map(type, rows)) - {list}:
        raise InvalidField(name, "must be a list of arrays")
    return list(map(tuple, rows))


def _policy_to_wire(policy: Policy) -> dict[str, Any]:
    return policy.to_plain()


def _policy_from_wire(name: str, plain: object) -> Policy:
    if type(plain) is not dict:
        raise InvalidField(name, "must be a dict")
    check_plain(name, plain, floats=False)
    try:
        return policy_from_plain_untrusted(plain)
    except PolicyError as exc:
        raise InvalidField(name, str(exc)) from None


_TO_WIRE: Final[dict[Wire, Callable[[Any], Any]]] = {
    Wire.PAIRS: _pairs_to_wire,
    Wire.TUPLES: list,  # msgpack packs tuples as arrays already; copy keeps the plan uniform
    Wire.POLICY: _policy_to_wire,
}
_FROM_WIRE: Final[dict[Wire, Callable[[str, object], Any]]] = {
    Wire.PAIRS: _pairs_from_wire,
    Wire.TUPLES: _tuples_from_wire,
    Wire.POLICY: _policy_from_wire,
}

# Plans derived once from the dataclass declarations: (field name, converter or None).
_EncodePlan = tuple[int, tuple[tuple[str, Callable[[Any], Any] | None], ...]]
_DecodePlan = tuple[type[Message], tuple[Callable[[object], Any] | None, ...]]


def _wire_kind(f: dataclasses.Field[Any]) -> Wire | None:
    return f.metadata.get("wire")


_ENCODE_PLANS: Final[dict[type[Message], _EncodePlan]] = {
    cls: (
        code,
        tuple(
            (f.name, _TO_WIRE[kind] if (kind := _wire_kind(f)) else None)
            for f in dataclasses.fields(cls)
        ),
    )
    for cls, code in TYPE_CODES.items()
}
_DECODE_PLANS: Final[dict[int, _DecodePlan]] = {
    code: (
        cls,
        tuple(
            partial(_FROM_WIRE[kind], f.name) if (kind := _wire_kind(f)) else None
            for f in dataclasses.fields(cls)
        ),
    )
    for code, cls in MESSAGE_TYPES.items()
}

_packb = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def encode(msg: Message) -> bytes:
    """Encode a (valid, since constructed) message; an oversized one is a caller bug."""
    code, fields = _ENCODE_PLANS[type(msg)]
    wire: list[Any] = [VERSION, code]
    for name, to_wire in fields:
        value = getattr(msg, name)
        wire.append(value if to_wire is None else to_wire(value))
    data: bytes = _packb(wire)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{type(msg).__name__} encodes to {len(data)} bytes, over the limit")
    return data


def decode_untrusted(data: bytes) -> Message:
    """Decode bytes from a peer; raises only ``MalformedMessage``."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage("size")
    try:
        wire = msgpack.unpackb(data, **UNPACK_LIMITS)
    except Exception as exc:  # msgpack documents "other exceptions can be raised"; all are input
        raise MalformedMessage("msgpack") from exc
    if type(wire) is not list or len(wire) < 2:
        raise MalformedMessage("shape")
    version, code = wire[0], wire[1]
    if type(version) is not int or version != VERSION:
        raise MalformedMessage("version")
    plan = _DECODE_PLANS.get(code) if type(code) is int else None
    if plan is None:
        raise MalformedMessage("type")
    cls, converters = plan
    args = wire[2:]
    if len(args) != len(converters):
        raise MalformedMessage("arity")
    try:
        for i, from_wire in enumerate(converters):
            if from_wire is not None:
                args[i] = from_wire(args[i])
        return cls(*args)
    except InvalidField as exc:
        raise MalformedMessage(f"field.{exc.field}", exc.detail) from None
