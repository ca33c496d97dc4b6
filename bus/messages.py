"""Every bus message type, declared once: frozen, slotted dataclasses validated on construction.

Theory of operation: a message is a dataclass whose fields, in declaration order, are the wire
fields after ``[VERSION, type_code]``; ``MESSAGE_TYPES`` is the one table pairing type codes with
classes. Construction validates every field with exact type checks (``bool`` is not an ``int``)
and raises ``InvalidField`` naming the field, so the codec can turn a bad peer's message into
``MalformedMessage("field.<name>")`` and local code that builds a bad message fails loudly.

A field whose Python form msgpack cannot carry as-is says so in its metadata: ``Wire.PAIRS``
(``list[tuple[int, bytes]]`` sent flat as ``[k0, v0, k1, v1, ...]``, the hot path, so that
encoding and decoding are C-level ``chain``/``zip`` calls) or ``Wire.TUPLES`` (a list of tuples
sent as a list of arrays). The frame checks use ``set(map(type, ...))`` and ``min``/``max`` so a
batch of thousands of frames is validated without a Python-level loop per frame.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, TypeVar

from bus.policy import Policy
from bus.syncrows import WireRow
from wire.malformed import Malformed

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from bus.nicstate import NicState

VERSION: Final = 1
MAX_FRAME: Final = 9216  # jumbo Ethernet frame, bytes
MAX_FRAMES_PER_BATCH: Final = 32768  # flat wire form: 2 items per frame, msgpack arrays <= 65536
MAX_PORT: Final = 0xFFFF_FFFF  # VPIDs and PPIDs are u32
MAX_NAME: Final = 255  # bytes; also the ZeroMQ identity limit
MAX_UINT: Final = 2**64 - 1  # msgpack uint64
MIN_INT: Final = -(2**63)  # msgpack int64
MAX_PLAIN_DEPTH: Final = 32  # nesting of policy / control payloads

_first = itemgetter(0)
_second = itemgetter(1)


_M = TypeVar("_M", bound="DataclassInstance")


class InvalidField(Malformed, ValueError):
    """A message field failed validation; ``field`` names it. Also a ValueError: local code
    that builds a message from an operator's arguments reports it as a bad argument."""

    def __init__(self, field_name: str, why: str = "") -> None:
        Malformed.__init__(self, f"field.{field_name}", why)
        self.args = (f"{field_name}: {why}" if why else field_name,)
        self.field = field_name


class Wire(enum.Enum):
    """How a field that msgpack cannot carry as-is travels (see the module docstring)."""

    PAIRS = "pairs"
    TUPLES = "tuples"
    POLICY = "policy"  # a bus.policy.Policy, sent as its plain dict


def _wire(kind: Wire) -> dict[str, Wire]:
    return {"wire": kind}


class HandoverKind(enum.IntEnum):
    """What the receiving NIC does with a handed-over frame."""

    TRANSMIT = 1  # target is an uplink PPID of the receiver: put it on the wire, no firewall
    DELIVER = 2  # target is a VPID homed on the receiver: run its pipeline and deliver


class FaultKind(enum.StrEnum):
    """Fault injection commands understood by ``bus.faults.FaultTable``."""

    PARTITION = "partition"
    DROP = "drop"
    DELAY = "delay"
    CLEAR = "clear"


_HANDOVER_KINDS: Final = frozenset(kind.value for kind in HandoverKind)
_FAULT_KINDS: Final = frozenset(kind.value for kind in FaultKind)
_NIC_STATES: Final = frozenset(state.value for state in NicState)


# -- field validators: each raises only InvalidField ------------------------------------------


def check_name(name: str, value: object) -> str:
    """Validate a process/peer name: non-empty, <= 255 UTF-8 bytes, not a ZeroMQ-reserved id."""
    if type(value) is not str or not value or value[0] == "\x00":
        raise InvalidField(name, "must be a non-empty str")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME:
        raise InvalidField(name, "too long")
    return value


def _check_str(name: str, value: object) -> None:
    if type(value) is not str:
        raise InvalidField(name, "must be a str")


def _check_uint(name: str, value: object, high: int = MAX_UINT) -> None:
    if type(value) is not int or not 0 <= value <= high:
        raise InvalidField(name, f"must be an int in 0..{high}")


def _check_uint_list(name: str, value: object, high: int = MAX_UINT, limit: int = 1024) -> None:
    if type(value) is not list or len(value) > limit:
        raise InvalidField(name, f"must be a list of at most {limit} ints")
    for item in value:
        _check_uint(name, item, high)


def _check_bool(name: str, value: object) -> None:
    if type(value) is not bool:
        raise InvalidField(name, "must be a bool")


def _check_seconds(name: str, value: object) -> float:
    # Exact types: bool is an int, and must not pass for seconds.
    if type(value) not in (int, float) or not isinstance(value, int | float):
        raise InvalidField(name, "must be finite seconds >= 0")
    if not math.isfinite(value) or value < 0:
        raise InvalidField(name, "must be finite seconds >= 0")
    return float(value)


class CheckedFrames(list[tuple[int, bytes]]):
    """(port, frame) pairs the codec has already validated: constructors need not look again."""

    __slots__ = ()


def check_flat_frames(name: str, ports: list[Any], datas: list[Any]) -> CheckedFrames:
    """Validate wire-form ports and frames (C-level passes) and pair them up."""
    if len(ports) > MAX_FRAMES_PER_BATCH:
        raise InvalidField(name, "too many frames")
    if ports:
        if set(map(type, ports)) != {int} or min(ports) < 0 or max(ports) > MAX_PORT:
            raise InvalidField(name, "ports must be u32 ints")
        if set(map(type, datas)) != {bytes} or max(map(len, datas)) > MAX_FRAME:
            raise InvalidField(name, f"frames must be bytes of <= {MAX_FRAME}")
    return CheckedFrames(zip(ports, datas, strict=True))


def check_frames(name: str, frames: object) -> None:
    """Validate ``list[tuple[port, frame]]`` with C-level passes, not a Python loop per frame."""
    if type(frames) is CheckedFrames:
        return
    if type(frames) is not list:
        raise InvalidField(name, "must be a list")
    if not frames:
        return
    if len(frames) > MAX_FRAMES_PER_BATCH:
        raise InvalidField(name, "too many frames")
    if set(map(type, frames)) != {tuple} or set(map(len, frames)) != {2}:
        raise InvalidField(name, "items must be (port, frame) tuples")
    ports = list(map(_first, frames))
    if set(map(type, ports)) != {int} or min(ports) < 0 or max(ports) > MAX_PORT:
        raise InvalidField(name, "ports must be u32 ints")
    datas = list(map(_second, frames))
    if set(map(type, datas)) != {bytes} or max(map(len, datas)) > MAX_FRAME:
        raise InvalidField(name, f"frames must be bytes of <= {MAX_FRAME}")


def _check_map_entries(name: str, entries: object) -> None:
    if type(entries) is not list:
        raise InvalidField(name, "must be a list")
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 3:
            raise InvalidField(name, "items must be (vpid, nic, ppid) tuples")
        vpid, nic, ppid = entry
        _check_uint(name, vpid, MAX_PORT)
        check_name(name, nic)
        _check_uint(name, ppid, MAX_PORT)


def check_plain(
    name: str, value: object, *, floats: bool = False, binary: bool = False, depth: int = 0
) -> None:
    """Validate nested dict[str, ...] / list of str, int, bool, None (float, bytes if allowed)."""
    if depth > MAX_PLAIN_DEPTH:
        raise InvalidField(name, "nested too deep")
    kind = type(value)
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise InvalidField(name, "map keys must be str")
            check_plain(name, item, floats=floats, binary=binary, depth=depth + 1)
    elif kind is list:
        for item in value:  # type: ignore[attr-defined]
            check_plain(name, item, floats=floats, binary=binary, depth=depth + 1)
    elif kind is int:
        if not MIN_INT <= value <= MAX_UINT:  # type: ignore[operator]
            raise InvalidField(name, "int out of msgpack range")
    elif kind is float and floats:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidField(name, "float must be finite")
    elif kind not in (str, bool, type(None)) and not (kind is bytes and binary):
        raise InvalidField(name, f"unsupported type {kind.__name__}")


def _check_dict(name: str, value: object, *, floats: bool, binary: bool = False) -> None:
    if type(value) is not dict:
        raise InvalidField(name, "must be a dict")
    check_plain(name, value, floats=floats, binary=binary)


# -- the messages -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """A DEALER announcing itself to the ROUTER it just connected to."""

    name: str
    role: str

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_name("role", self.role)


@dataclass(frozen=True, slots=True)
class FrameBatch:
    """Many Ethernet frames; the port is a VPID on the PCIe channel, a PPID towards the fabric."""

    src: str
    frames: list[tuple[int, bytes]] = field(metadata=_wire(Wire.PAIRS))

    def __post_init__(self) -> None:
        check_name("src", self.src)
        check_frames("frames", self.frames)


@dataclass(frozen=True, slots=True)
class Handover:
    """NIC-to-NIC private channel data: frames to transmit on an uplink or deliver to a VPID."""

    src: str
    kind: HandoverKind
    frames: list[tuple[int, bytes]] = field(metadata=_wire(Wire.PAIRS))

    def __post_init__(self) -> None:
        check_name("src", self.src)
        if type(self.kind) not in (int, HandoverKind) or self.kind not in _HANDOVER_KINDS:
            raise InvalidField("kind", "unknown handover kind")
        object.__setattr__(self, "kind", HandoverKind(self.kind))  # frozen: normalise int -> enum
        check_frames("frames", self.frames)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness beacon; ``epoch`` is the newest map epoch the sender has applied."""

    src: str
    seq: int
    epoch: int
    state: NicState
    links_down: list[int] = field(default_factory=list)  # own uplink PPIDs without carrier
    # Load-based teaming: flat (team uplink index, VPID, bytes/s) triples of the last interval.
    vpid_load: list[int] = field(default_factory=list)
    # The sender's replication stream as of this beat (boot id, last sequence number): a sibling
    # that holds less asks for the rest, so a lost last batch is repaired on a quiet stream too.
    sync_boot: int = 0
    sync_seq: int = 0
    probe: int = 0  # the newest `Probe.seq` of the host this NIC has answered (0: none)

    def __post_init__(self) -> None:
        check_name("src", self.src)
        _check_uint("seq", self.seq)
        _check_uint("epoch", self.epoch)
        if type(self.state) not in (str, NicState) or self.state not in _NIC_STATES:
            raise InvalidField("state", "unknown NIC state")
        object.__setattr__(self, "state", NicState(self.state))
        _check_uint_list("links_down", self.links_down, MAX_PORT)
        _check_uint_list("vpid_load", self.vpid_load, limit=3 * 4096)
        if len(self.vpid_load) % 3:
            raise InvalidField("vpid_load", "must hold (uplink, vpid, rate) triples")
        _check_uint("sync_boot", self.sync_boot)
        _check_uint("sync_seq", self.sync_seq)
        _check_uint("probe", self.probe)


@dataclass(frozen=True, slots=True)
class Probe:
    """The host asks a NIC to prove it is alive now: it answers at once with a `Heartbeat`
    echoing ``seq``. With ``want_map`` it also sends the map it holds (a restarted host
    recovers the map and epoch from its NICs before it decides anything)."""

    src: str
    seq: int
    want_map: bool = False

    def __post_init__(self) -> None:
        check_name("src", self.src)
        _check_uint("seq", self.seq)
        _check_bool("want_map", self.want_map)


@dataclass(frozen=True, slots=True)
class LinkState:
    """The fabric tells a NIC whether uplink ``ppid`` has carrier (a cable pulled or put back)."""

    src: str
    ppid: int
    up: bool

    def __post_init__(self) -> None:
        check_name("src", self.src)
        _check_uint("ppid", self.ppid, MAX_PORT)
        _check_bool("up", self.up)


@dataclass(frozen=True, slots=True)
class MapUpdate:
    """The whole host VPID map at ``epoch``: entries of (VPID, home NIC name, PPID on it)."""

    epoch: int
    entries: list[tuple[int, str, int]] = field(metadata=_wire(Wire.TUPLES))

    def __post_init__(self) -> None:
        _check_uint("epoch", self.epoch)
        _check_map_entries("entries", self.entries)


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    """The host's NIC policy (``bus.policy.Policy``: segments, interfaces, rules, team policy,
    timeouts) at ``version``; it travels as a plain dict without floats."""

    version: int
    policy: Policy = field(metadata=_wire(Wire.POLICY))

    def __post_init__(self) -> None:
        _check_uint("version", self.version)
        if type(self.policy) is not Policy:
            raise InvalidField("policy", "must be a bus.policy.Policy")


@dataclass(frozen=True, slots=True)
class ControlRequest:
    """An operator command; the reply carries the same ``req_id``."""

    req_id: int
    cmd: str
    args: dict[str, object]

    def __post_init__(self) -> None:
        _check_uint("req_id", self.req_id)
        check_name("cmd", self.cmd)
        _check_dict("args", self.args, floats=True)


@dataclass(frozen=True, slots=True)
class ControlReply:
    """The answer to a ``ControlRequest``; ``error`` is empty when ``ok``."""

    req_id: int
    ok: bool
    result: dict[str, object]
    error: str

    def __post_init__(self) -> None:
        _check_uint("req_id", self.req_id)
        _check_bool("ok", self.ok)
        _check_dict("result", self.result, floats=True, binary=True)  # captured frames
        _check_str("error", self.error)


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection command for the channel to ``peer`` ("*" = every peer), for ``seconds``.

    ``probability`` is used by DROP and ``delay`` (seconds) by DELAY; CLEAR ignores ``seconds``.
    """

    kind: FaultKind
    peer: str
    seconds: float
    probability: float = 1.0
    delay: float = 0.0

    def __post_init__(self) -> None:
        if type(self.kind) not in (str, FaultKind) or self.kind not in _FAULT_KINDS:
            raise InvalidField("kind", "unknown fault kind")
        object.__setattr__(self, "kind", FaultKind(self.kind))
        check_name("peer", self.peer)
        object.__setattr__(self, "seconds", _check_seconds("seconds", self.seconds))
        probability = _check_seconds("probability", self.probability)
        if probability > 1.0:
            raise InvalidField("probability", "must be in 0..1")
        object.__setattr__(self, "probability", probability)
        object.__setattr__(self, "delay", _check_seconds("delay", self.delay))


@dataclass(frozen=True, slots=True)
class SyncBatch:
    """Replication: changes ``first_seq``.. of the sender's state stream (``reset``: snapshot).

    ``boot``: the sender's boot id (its numbering restarts with each boot); ``until``: on a
    snapshot's first batch, the sequence number its last batch ends at. ``made_at``: the
    sender's CLOCK_MONOTONIC when it made the changes (0: unknown), which every process of one
    machine shares, so the receiver measures the sync lag. ``changes`` are `bus.syncrows` rows
    in their wire form: the receiver's stream decodes them (`rows_from_wire_untrusted`), so a
    bad row is a drop its replication counts, not a malformed bus message.
    """

    src: str
    first_seq: int
    changes: list[WireRow]
    reset: bool = False
    boot: int = 0
    until: int = 0
    made_at: float = 0.0

    def __post_init__(self) -> None:
        check_name("src", self.src)
        _check_uint("first_seq", self.first_seq)
        if type(self.changes) is not list or len(self.changes) > MAX_FRAMES_PER_BATCH:
            raise InvalidField("changes", "must be a list of at most 32768 changes")
        for change in self.changes:
            if type(change) is not list:
                raise InvalidField("changes", "items must be lists")
        check_plain("changes", self.changes, floats=True)
        _check_bool("reset", self.reset)
        _check_uint("boot", self.boot)
        _check_uint("until", self.until)
        object.__setattr__(self, "made_at", _check_seconds("made_at", self.made_at))


@dataclass(frozen=True, slots=True)
class SyncAck:
    """Replication: the sender holds the receiver's stream up to ``seq``."""

    src: str
    seq: int

    def __post_init__(self) -> None:
        check_name("src", self.src)
        _check_uint("seq", self.seq)


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Replication: resend your stream from ``from_seq`` (0: a whole snapshot)."""

    src: str
    from_seq: int

    def __post_init__(self) -> None:
        check_name("src", self.src)
        _check_uint("from_seq", self.from_seq)


Message = (
    Hello
    | FrameBatch
    | Handover
    | Heartbeat
    | MapUpdate
    | PolicyUpdate
    | ControlRequest
    | ControlReply
    | Fault
    | LinkState
    | SyncBatch
    | SyncAck
    | SyncRequest
    | Probe
)

# The one table of type codes. Codes are wire format: never renumber, only append.
MESSAGE_TYPES: Final[dict[int, type[Message]]] = {
    1: Hello,
    2: FrameBatch,
    3: Handover,
    4: Heartbeat,
    5: MapUpdate,
    6: PolicyUpdate,
    7: ControlRequest,
    8: ControlReply,
    9: Fault,
    10: LinkState,
    11: SyncBatch,
    12: SyncAck,
    13: SyncRequest,
    14: Probe,
}
TYPE_CODES: Final[dict[type[Message], int]] = {cls: code for code, cls in MESSAGE_TYPES.items()}


BATCH_FRAMES: Final = 4096  # frames per batch a process sends (the codec allows 32768)
BATCH_BYTES: Final = 4 * 1024 * 1024  # frame bytes per batch: half the codec's message limit


def frame_chunks(frames: list[tuple[int, bytes]]) -> list[list[tuple[int, bytes]]]:
    """Split (port, frame) pairs into batches under `BATCH_FRAMES` and `BATCH_BYTES`."""
    if not frames:
        return []
    if len(frames) <= BATCH_FRAMES and sum(map(len, map(_second, frames))) <= BATCH_BYTES:
        return [frames]  # the usual case, decided at C speed
    out: list[list[tuple[int, bytes]]] = [[]]
    size = 0
    for item in frames:
        if out[-1] and (len(out[-1]) >= BATCH_FRAMES or size + len(item[1]) > BATCH_BYTES):
            out.append([])
            size = 0
        out[-1].append(item)
        size += len(item[1])
    return out


def trusted(cls: type[_M], *values: Any) -> _M:
    """Build a message without validating it: only from data this process made or has already
    validated (frames it decoded and forwards). Peers still validate everything they decode."""
    msg = object.__new__(cls)
    for f, value in zip(dataclasses.fields(cls), values, strict=True):
        object.__setattr__(msg, f.name, value)  # frozen dataclass: the documented way in
    return msg
