"""bus.log: JSON lines with the required keys, console lines, crash safety, torn-line reading.

configure_logging sets structlog's process-global config, so every test that calls it runs the
logging in a fresh interpreter.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bus.log import configure_logging, read_log

TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
CONSOLE_RE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} \S+ ")
HEAD = ["ts", "proc", "host", "nic", "event", "level"]


def _run(script: str, run_dir: Path, rc: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter as ``RUN = run_dir``; stdout is a pipe."""
    prelude = f"from pathlib import Path\nRUN = Path({str(run_dir)!r})\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == rc, proc.stderr
    return proc


MAIN_SCRIPT = """
    import enum, os
    import structlog
    from bus.log import configure_logging

    class Color(enum.Enum):
        RED = "red"

    log = configure_logging("nic1", RUN, host="h1", nic="nic1")
    log.info("nic.up", pid=123, mac=b"\\x02\\x00\\x00\\x00\\x01\\x11")
    log.debug("too.chatty", n=1)
    log.warning("team.failover.start", reason="heartbeat lost", vpids=[1, 2])
    structlog.get_logger("elsewhere").info("map.epoch", epoch=7)
    log.info(
        "odd.values", nan=float("nan"), keyed={b"k": 1}, tags={"b"}, color=Color.RED,
        path=Path("/x"), ts="caller",
    )
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("worker.crash")
    log.bind(host="h9").info("override.host")
    os._exit(3)  # no interpreter shutdown, no buffer flush: what a crash leaves behind
"""


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[dict[str, Any]]]:
    run_dir = tmp_path_factory.mktemp("run")
    before = datetime.now(UTC)
    proc = _run(MAIN_SCRIPT, run_dir, rc=3)
    path = run_dir / "logs" / "nic1.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]  # every line is whole JSON
    for event in events:
        ts = datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert before - timedelta(seconds=1) <= ts <= datetime.now(UTC)
    return path, proc.stdout, events


def test_json_lines_have_required_keys_in_order(main_run: Any) -> None:
    _, _, events = main_run
    assert [e["event"] for e in events] == [
        "nic.up",
        "team.failover.start",
        "map.epoch",
        "odd.values",
        "worker.crash",
        "override.host",
    ]
    for event in events:
        assert list(event)[:6] == HEAD
        assert TS_RE.fullmatch(event["ts"]), event["ts"]
        assert event["proc"] == "nic1" and event["nic"] == "nic1"
    up = events[0]
    assert up["host"] == "h1" and up["level"] == "info" and up["pid"] == 123
    assert up["mac"] == "020000000111"  # bytes as hex
    assert events[1]["level"] == "warning" and events[1]["vpids"] == [1, 2]
    assert events[2]["epoch"] == 7  # a module's own logger gets the identity too


def test_unencodable_values_do_not_crash(main_run: Any) -> None:
    _, _, events = main_run
    odd = events[3]
    assert odd["nan"] == "nan" and odd["keyed"] == {"6b": 1} and odd["tags"] == ["b"]
    assert odd["color"] == "red" and odd["path"] == "/x"
    assert TS_RE.fullmatch(odd["ts"]) and odd["ts_arg"] == "caller"


def test_exceptions_and_overrides(main_run: Any) -> None:
    _, _, events = main_run
    crash = events[4]
    assert crash["level"] == "error" and "ZeroDivisionError" in crash["exception"]
    assert events[5]["host"] == "h9"


def test_console_lines_are_flushed_and_compact(main_run: Any) -> None:
    _, stdout, _ = main_run
    lines = [line for line in stdout.splitlines() if CONSOLE_RE.match(line)]
    assert len(lines) == 6  # the process died by os._exit: all were flushed per line
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} nic1 nic\.up pid=123 mac=020000000111", lines[0])
    assert 'WARNING team.failover.start reason="heartbeat lost" vpids="[1, 2]"' in lines[1]
    assert "ERROR worker.crash" in lines[4]
    assert "too.chatty" not in stdout
    assert "Traceback" in stdout  # the exception follows its line


def test_console_off_and_level_debug(tmp_path: Path) -> None:
    out = _run(
        """
        from bus.log import configure_logging
        log = configure_logging("fabricd", RUN, console=False, level="debug")
        log.debug("port.learn", port=3)
        """,
        tmp_path,
    )
    assert out.stdout == ""
    (event,) = read_log(tmp_path / "logs" / "fabricd.jsonl")
    assert event["event"] == "port.learn" and event["level"] == "debug"
    assert event["host"] == "" and event["nic"] == ""


def test_read_log_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    good = [{"ts": "2026-01-01T00:00:00.000001Z", "event": "a"}, {"event": "b", "n": 2}]
    text = "".join(json.dumps(e) + "\n" for e in good)
    path.write_text(text + '{"ts": "2026-01-01T00:00:01.0', encoding="utf-8")
    assert list(read_log(path)) == good
    path.write_bytes(text.encode() + b'{"event": "caf\xc3')  # torn inside a UTF-8 sequence
    assert list(read_log(path)) == good
    path.write_text(text + "\n", encoding="utf-8")
    assert list(read_log(path)) == good


def test_a_restarted_writer_starts_a_fresh_line(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "nic2.jsonl").write_text('{"event": "old"}\n{"event": "to', encoding="utf-8")
    _run(
        """
        from bus.log import configure_logging
        configure_logging("nic2", RUN, nic="nic2", console=False).info("nic.boot")
        """,
        tmp_path,
    )
    events = list(read_log(logs / "nic2.jsonl"))
    assert [e["event"] for e in events] == ["old", "nic.boot"]


def test_bad_arguments_fail_before_configuring(tmp_path: Path) -> None:
    # Validation happens before structlog.configure, so this in-process call changes nothing.
    with pytest.raises(ValueError, match="proc"):
        configure_logging("../etc/x", tmp_path)
    with pytest.raises(ValueError, match="level"):
        configure_logging("nic1", tmp_path, level="loud")
    assert not (tmp_path / "logs").exists()
