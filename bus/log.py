"""Structured logging shared by every nicteam process: JSON lines in run/logs, a console line.

Each process calls ``configure_logging`` once at start-up. Every event then goes to
``<run_dir>/logs/<proc>.jsonl`` as one JSON object per line, keys in this order: ``ts`` (UTC,
microseconds, ``2026-11-20T22:41:07.123456Z``), ``proc``, ``host``, ``nic``, ``event`` (dotted,
``nic.up``), ``level``, then the event's own fields; and, unless ``console=False``, as one
compact line on stdout (``12:00:01.123 nic1 nic.up pid=123``) for honcho to show.

Crash safety: a JSON line is one unbuffered ``write(2)`` on an ``O_APPEND`` descriptor and the
console line is flushed, so a process killed right after logging loses nothing, and a card and
its restarted NIC OS may append to the same file without interleaving. If a line was torn
anyway (the disk filled up mid-write), the next writer to open the file starts a fresh line,
and ``read_log`` skips the torn one.
"""

from __future__ import annotations

import enum
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

from bus.rundir import private_dir, private_file

__all__ = ["LEVELS", "configure_logging", "read_log"]

#: Level names accepted by ``configure_logging`` and their stdlib numbers.
LEVELS: Mapping[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_HEAD = ("ts", "proc", "host", "nic", "event", "level")
_PROC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_BARE_RE = re.compile(r"[^\s=\"']+")  # console values printed without quotes


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_default(value: object) -> object:
    """What json cannot encode: bytes as hex, enums by value, sets as lists, the rest as str."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _plain(value: object) -> object:
    """A strictly JSON-encodable copy, for the rare event the fast path refuses."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(_plain(k)): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN is not JSON
    if value is None or isinstance(value, bool | int | str):
        return value
    return _plain(_json_default(value))


def _to_json(event: dict[str, Any]) -> str:
    try:
        return json.dumps(
            event, default=_json_default, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError):  # non-str keys, NaN, a cycle: logging must not crash
        return json.dumps(_plain(event), ensure_ascii=False, separators=(",", ":"))


def _console_value(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, enum.Enum):
        value = value.value
    text = str(value)
    return text if _BARE_RE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _console_line(event: Mapping[str, Any]) -> str:
    """``12:00:01.123 nic1 nic.up pid=123``; level shown only when it is not info."""
    parts = [event["ts"][11:23], event["proc"]]
    if event["level"] != "info":
        parts.append(event["level"].upper())
    parts.append(event["event"])
    exc = event.get("exception")
    parts.extend(
        f"{k}={_console_value(v)}" for k, v in event.items() if k not in _HEAD and k != "exception"
    )
    line = " ".join(parts)
    return f"{line}\n{exc}" if exc else line


def _open_append(path: Path) -> int:
    fd = private_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    # A line torn by an earlier crash must not swallow our first line.
    size = os.fstat(fd).st_size
    if size:
        with open(path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                os.write(fd, b"\n")
    return fd


class _Sink:
    """The last structlog processor: writes the JSON line, returns the console line."""

    def __init__(self, path: Path, proc: str, host: str, nic: str, console: bool) -> None:
        self._fd = _open_append(path)
        self._identity = {"proc": proc, "host": host, "nic": nic}
        self._console = console

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
        event: dict[str, Any] = {"ts": _utc_now()}
        for key, value in self._identity.items():
            event[key] = event_dict.pop(key, value)
        event["event"] = str(event_dict.pop("event", ""))
        event["level"] = event_dict.pop("level", method_name)
        if "ts" in event_dict:  # the time of logging wins; keep the caller's value beside it
            event_dict["ts_arg"] = event_dict.pop("ts")
        event.update(event_dict)
        data = memoryview((_to_json(event) + "\n").encode("utf-8", "backslashreplace"))
        while data:  # write(2) on a regular file is whole in practice; be exact anyway
            data = data[os.write(self._fd, data) :]
        return _console_line(event) if self._console else ""


def configure_logging(
    proc: str,
    run_dir: Path,
    *,
    host: str = "",
    nic: str = "",
    console: bool = True,
    level: str = "info",
) -> FilteringBoundLogger:
    """Send structlog events to ``run_dir/logs/<proc>.jsonl`` (and stdout); return a logger."""
    if not isinstance(proc, str) or not _PROC_RE.fullmatch(proc):
        raise ValueError(f"proc: not a process name usable as a file name: {proc!r}")
    if level not in LEVELS:
        raise ValueError(f"level: must be one of {', '.join(LEVELS)}, got {level!r}")
    logs = private_dir(private_dir(run_dir) / "logs")
    sink = _Sink(logs / f"{proc}.jsonl", proc, host, nic, console)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            sink,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        # PrintLogger flushes every line; ReturnLogger just drops the (empty) console string.
        logger_factory=structlog.PrintLoggerFactory()
        if console
        else structlog.ReturnLoggerFactory(),
        # Modules may hold loggers obtained before this call; they must see this config.
        cache_logger_on_first_use=False,
    )
    logger: FilteringBoundLogger = structlog.get_logger().bind()
    return logger


def read_log(path: str | Path) -> Iterator[dict[str, Any]]:
    """The events of one ``.jsonl`` log, in file order; torn (unparseable) lines are skipped."""
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                event = json.loads(raw)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError: a torn line
                continue
            if isinstance(event, dict):
                yield event
