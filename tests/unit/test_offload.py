"""The offload decision (`nicd.datapath.offload`), the dry copy a trace runs on, and the
datapath's layering: what install, trace and `flows --tier slow` share, and what keeps them
from drifting apart."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from nicd.datapath.conntrack import CtRecord, PseudoState, TcpState
from nicd.datapath.decision import PortKind
from nicd.datapath.offload import Room, Why, offload
from nicd.datapath.pipeline import Pipeline
from nicd.datapath.rules import Direction
from nicd.datapath.tiers import Tier, fast_key
from nicd.datapath.trace import TraceLog, trace
from nicd.inspect import flow_rows
from tests.unit.dpfixtures import make_pipeline, udp, vm
from wire.protocols import PROTO_TCP

VM1, VM2 = vm(1), vm(2)
ROOT = Path(__file__).resolve().parents[2]


def record(sw_ok: bool = True, hw_capable: bool = True, established: bool = True) -> CtRecord:
    state = TcpState.ESTABLISHED if established else TcpState.SYN_SENT
    key = (1, 4, PROTO_TCP, 1, 2, 1000, 80)
    return CtRecord(key, Direction.FROM_VM, state, "r", sw_ok, hw_capable, 0.0, 0.0, 1, 60)


def test_offload_says_where_a_path_goes_and_why_not() -> None:
    ok = record()
    free, full, off = Room.FREE, Room.FULL, Room.OFF
    both = offload([ok], True, True, free, free)
    assert (both.cache, both.eswitch, both.why, both.full) == (True, True, (), ())
    assert offload([ok], False, True, free, free).why == (Why.NOT_FAST_FRAME,)
    assert offload([record(sw_ok=False)], True, True, free, free).why == (Why.INSPECT,)
    assert offload([ok, record(established=False)], True, True, free, free).why == (
        Why.NOT_ESTABLISHED,
    )
    assert offload([ok], True, False, free, free).why == (Why.NOT_EXPRESSIBLE,)
    sw_only = offload([record(hw_capable=False)], True, True, free, free)
    assert (sw_only.cache, sw_only.eswitch, sw_only.why) == (True, False, (Why.NOT_HW_OK,))
    hw_full = offload([ok], True, True, free, full)
    assert (hw_full.cache, hw_full.eswitch, hw_full.full) == (True, False, (Tier.ESWITCH,))
    assert hw_full.why == (Why.ESWITCH_FULL,)
    no_cache = offload([ok], True, True, off, free)
    assert (no_cache.cache, no_cache.eswitch, no_cache.why) == (
        False,
        True,
        (Why.CACHE_OFF_OR_FULL,),
    )
    assert offload([ok], True, True, full, off).why == (Why.CACHE_OFF_OR_FULL, Why.ESWITCH_OFF)
    assert offload([ok], True, True, full, off).full == (Tier.CACHE,)


def test_flows_says_why_a_slow_flow_is_slow_with_the_same_decision() -> None:
    """An established sw-only flow the tiers lost is 'no fast entry', not 'not hw_ok'."""
    p = make_pipeline("nic1")
    p.process(PortKind.VF, VM1.ppid, udp(VM1, VM2, 5000, 53), 0.0)
    p.process(PortKind.VF, VM2.ppid, udp(VM2, VM1, 53, 5000), 0.0)
    for rec in p.ct:
        assert rec.state is PseudoState.REPLIED
        rec.hw_capable = False  # as a sw-only rule leaves it
        p._evict(rec)
    slow = flow_rows(p, "slow", 0.0)["flows"]
    assert slow and {r["why"] for r in slow} == {"no fast entry (evicted, or not seen since)"}


def _busy(n: int) -> tuple[Pipeline, list[tuple[PortKind, int, bytes]]]:
    p = make_pipeline("nic1")
    frames = []
    for sport in range(1000, 1000 + n):
        p.process(PortKind.VF, VM1.ppid, udp(VM1, VM2, sport, 53), 0.0)
        back = (PortKind.VF, VM2.ppid, udp(VM2, VM1, 53, sport))
        p.process(*back, 0.0)
        p.process(*back, 0.0)
        frames.append(back)
    return p, frames


def test_a_dry_copy_copies_nothing_that_grows_with_the_tables() -> None:
    """A trace on a NIC with many connections copies only what its frame touches."""
    p, frames = _busy(300)
    assert len(p.ct) >= 300 and len(p.cache.entries) >= 300
    ingress, port, frame = frames[7]
    key = fast_key(ingress, port, frame)
    s = p.dry_copy(TraceLog(p, 1.0), key)
    assert len(s.ct) == 0
    for table in (s.cache, s.eswitch):
        assert dict.__len__(table.entries) <= 1  # the one entry at `key`, copied
    # ...yet they answer a room check as the real tables do.
    assert (len(s.cache.entries), len(s.eswitch.entries)) == (
        len(p.cache.entries),
        len(p.eswitch.entries),
    )
    t = trace(p, ingress, port, frame, 1.0)
    assert t.verdict == "forward" and t.tier in ("cache", "eswitch")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_the_datapath_imports_only_itself_wire_and_the_stdlib() -> None:
    """No driver (nicd.inspect, the worker), no bus, no I/O library inside nicd/datapath/."""
    for path in sorted((ROOT / "nicd" / "datapath").glob("*.py")):
        for name in _imports(path):
            top = name.split(".")[0]
            ok = name.startswith("nicd.datapath") or top == "wire" or top == "__future__"
            assert ok or top in sys.stdlib_module_names, f"{path.name} imports {name}"


def test_trace_lives_in_the_pipeline_not_beside_it() -> None:
    """No mirror of the decision code: the trace module defines no decision methods."""
    tree = ast.parse((ROOT / "nicd" / "datapath" / "trace.py").read_text())
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    mirrors = {"_from_vf", "from_vf", "_slow_path", "slow_path", "_to_vpid", "to_vpid", "decide"}
    assert not names & mirrors
    classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    assert classes == {"TraceError", "TraceLog", "Egress", "Trace"}
