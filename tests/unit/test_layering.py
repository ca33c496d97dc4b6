"""The layering of README's "Architecture", checked by walking every import of the product.

Floors from the ground up: wire, hoststack, kernel -> bus -> configs -> nicd | hostd | fabricd
-> ctl (kernel, TAPs and namespaces, only for hostd, fabricd and ctl).
A package imports only from floors below it (and itself); the rules are data, below. Every
import counts, also one inside a function or under `if TYPE_CHECKING:`. bench/ and tests/ are
harnesses: they may import anything, and no product package may import them.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What each product package may import of the others (itself always).
ALLOWED: dict[str, frozenset[str]] = {
    "wire": frozenset(),
    "hoststack": frozenset({"wire"}),
    # TAP devices and network namespaces: for the daemons that plug them in, and the CLI
    "kernel": frozenset({"wire"}),
    "bus": frozenset({"wire", "hoststack"}),
    "configs": frozenset({"wire", "hoststack", "bus"}),
    # the daemons; nicd and hostd meet only on the bus
    "nicd": frozenset({"wire", "hoststack", "bus", "configs"}),
    "hostd": frozenset({"wire", "hoststack", "bus", "configs", "kernel"}),
    "fabricd": frozenset({"wire", "hoststack", "bus", "configs", "kernel"}),
    # the CLI; nothing outside nicd imports nicd
    "ctl": frozenset({"wire", "hoststack", "bus", "configs", "kernel", "hostd", "fabricd"}),
}
HARNESSES = frozenset({"bench", "tests"})
FIRST_PARTY = frozenset(ALLOWED) | HARNESSES

# The datapath is sans-I/O: the stdlib minus its I/O, the wire, and itself; nothing else.
DATAPATH = "nicd.datapath"
DATAPATH_FIRST_PARTY = ("wire", DATAPATH)
IO_MODULES = frozenset({
    "asyncio", "socket", "selectors", "select", "ssl", "signal", "subprocess", "threading",
    "multiprocessing", "concurrent", "time", "logging", "io", "os", "shutil", "tempfile",
    "pathlib", "mmap", "http", "urllib", "sqlite3",
})  # fmt: skip


def _module_of(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in `path`; `from p import m` names p.m if m is a module."""
    module = _module_of(path, root)
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node, path.name == "__init__.py")
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                as_path = root / sub.replace(".", "/")
                named = as_path.is_dir() or as_path.with_suffix(".py").is_file()
                yield node.lineno, sub if named else base


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def rule_broken(module: str, target: str) -> str | None:
    """The floor `module` stands on, if importing `target` from it breaks a rule; else None."""
    top, target_top = module.split(".")[0], target.split(".")[0]
    if _within(module, DATAPATH):
        if target_top in FIRST_PARTY:
            ok = any(_within(target, p) for p in DATAPATH_FIRST_PARTY)
        else:
            ok = target_top in sys.stdlib_module_names and target_top not in IO_MODULES
        return None if ok else DATAPATH
    if target_top not in FIRST_PARTY or target_top == top:
        return None
    return None if target_top in ALLOWED[top] else top


def violations(root: Path) -> list[str]:
    """Every forbidden import under the product packages of `root`, as `file:line: ...`."""
    out = []
    for package in sorted(ALLOWED):
        for path in sorted((root / package).rglob("*.py")):
            module = _module_of(path, root)
            for line, target in sorted(set(imports(path, root))):
                floor = rule_broken(module, target)
                if floor is not None:
                    rel = path.relative_to(root)
                    out.append(f"{rel}:{line}: package {floor} may not import {target}")
    return out


def test_the_product_keeps_its_layering() -> None:
    found = violations(ROOT)
    assert not found, "forbidden imports:\n" + "\n".join(found)


def test_the_walk_sees_the_product() -> None:
    # A walk that found no files or no imports would pass the test above vacuously.
    files = [p for pkg in ALLOWED for p in (ROOT / pkg).rglob("*.py")]
    seen = {t for p in files for _, t in imports(p, ROOT)}
    assert len(files) > 50 and len(seen) > 100
    assert {"wire.frames", "bus.messages", "configs.model", "asyncio", "zmq"} <= seen


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in ALLOWED:
        (root / package).mkdir(exist_ok=True)
    return root


def test_the_checker_reports_each_kind_of_forbidden_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "wire/__init__.py": "",
            "wire/frames.py": "import struct\nfrom bus import codec\n",
            "hoststack/tcp.py": "from wire import frames\nimport hostd.daemon\n",
            "bus/codec.py": "import msgpack\nfrom configs.loader import Config\n",
            "bus/__init__.py": "",
            "configs/loader.py": "from bus.codec import x\nfrom nicd.datapath import rules\n",
            "nicd/__init__.py": "",
            "nicd/card.py": "import asyncio\nfrom bus import codec\nfrom hostd.fpag import Fpag\n",
            "nicd/inspect.py": "from ctl.cli import main\n",
            "nicd/datapath/__init__.py": "",
            "nicd/datapath/rules.py": "import enum\n",
            "nicd/datapath/pipeline.py": (
                "import hashlib\n"
                "from wire.frames import Packet\n"
                "from . import rules\n"
                "from .rules import Action\n"
                "def now():\n"
                "    import time\n"
                "    from nicd.inspect import row\n"
                "    import zmq\n"
                "    from bus.messages import SyncBatch\n"
            ),
            "hostd/daemon.py": "from nicd.datapath.teaming import Team\nimport fabricd\n",
            "fabricd/__init__.py": "from tests.unit import dpfixtures\n",
            "ctl/cli.py": "from hostd.daemon import HostDaemon\nfrom nicd.datapath import trace\n",
        },
    )
    assert violations(root) == [
        "bus/codec.py:2: package bus may not import configs.loader",
        "configs/loader.py:2: package configs may not import nicd.datapath.rules",
        "ctl/cli.py:2: package ctl may not import nicd.datapath",
        "fabricd/__init__.py:1: package fabricd may not import tests.unit",
        "hostd/daemon.py:1: package hostd may not import nicd.datapath.teaming",
        "hostd/daemon.py:2: package hostd may not import fabricd",
        "hoststack/tcp.py:2: package hoststack may not import hostd.daemon",
        "nicd/card.py:3: package nicd may not import hostd.fpag",
        "nicd/datapath/pipeline.py:6: package nicd.datapath may not import time",
        "nicd/datapath/pipeline.py:7: package nicd.datapath may not import nicd.inspect",
        "nicd/datapath/pipeline.py:8: package nicd.datapath may not import zmq",
        "nicd/datapath/pipeline.py:9: package nicd.datapath may not import bus.messages",
        "nicd/inspect.py:1: package nicd may not import ctl.cli",
        "wire/frames.py:2: package wire may not import bus.codec",
    ]


def test_relative_imports_are_resolved(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "nicd/datapath/__init__.py": "from . import rules\nfrom .. import card\n",
            "nicd/datapath/rules.py": "from ..card import Card\n",
            "nicd/card.py": "",
        },
    )
    assert violations(root) == [
        "nicd/datapath/__init__.py:2: package nicd.datapath may not import nicd.card",
        "nicd/datapath/rules.py:1: package nicd.datapath may not import nicd.card",
    ]
