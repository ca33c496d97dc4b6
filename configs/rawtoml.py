"""Bounds on a config file checked before tomllib reads it: its size and how deep it nests.

tomllib recurses once per nested array or inline table, so ``x = [[[[...`` 100,000 deep ends in
RecursionError and a thousand-line traceback; and it spends seconds and hundreds of MB on a
50 MB file before any field is checked. Both are refused here, from the raw bytes, by code that
neither recurses nor reads more than the limit.
"""

from __future__ import annotations

import re
from pathlib import Path

from configs.model import ConfigError
from configs.ranges import MAX_CONFIG_BYTES, MAX_NESTING

__all__ = ["check_nesting", "nesting_overflow", "read_bounded"]

# What changes the nesting or hides brackets: quotes open strings, '#' a comment.
_TOKEN = re.compile(r"\"\"\"|'''|[\"'#\[\]{}\n]")
_CLOSE = {'"""': re.compile(r'(?<!\\)(?:\\\\)*"""'), "'''": re.compile("'''")}
_LINE_END = {'"': re.compile(r'(?<!\\)(?:\\\\)*"|\n'), "'": re.compile(r"'|\n")}


def read_bounded(path: Path, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """The file's bytes; ConfigError naming the file if it is over ``limit`` bytes."""
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)  # never more: the file may be huge or still growing
            size = max(len(data), path.stat().st_size)
    except OSError as e:
        raise ConfigError(str(path), f"cannot read: {e.strerror or e}") from None
    if len(data) > limit:
        raise ConfigError(str(path), f"file is {size} bytes, at most {limit}")
    return data


def nesting_overflow(text: str, limit: int = MAX_NESTING) -> int | None:
    """The line where arrays and inline tables nest deeper than ``limit``, else None.

    Brackets inside strings and comments do not count; malformed strings are left for tomllib
    to report (this only has to see the nesting right in text tomllib would accept).
    """
    depth, line, pos = 0, 1, 0
    while (m := _TOKEN.search(text, pos)) is not None:
        tok, pos = m.group(), m.end()
        if tok == "\n":
            line += 1
        elif tok == "#":
            pos = _skip(text, pos, re.compile("\n"), inclusive=False)
        elif tok in _CLOSE:
            end = _skip(text, pos, _CLOSE[tok], inclusive=True)
            line, pos = line + text.count("\n", pos, end), end
        elif tok in _LINE_END:
            end = _skip(text, pos, _LINE_END[tok], inclusive=True)
            line, pos = line + text.count("\n", pos, end), end
        elif tok in "[{":
            depth += 1
            if depth > limit:
                return line
        else:
            depth = max(0, depth - 1)
    return None


def _skip(text: str, pos: int, until: re.Pattern[str], *, inclusive: bool) -> int:
    m = until.search(text, pos)
    if m is None:
        return len(text)
    return m.end() if inclusive else m.start()


def check_nesting(text: str, path: Path) -> None:
    """ConfigError naming the file and line if ``text`` nests deeper than MAX_NESTING."""
    line = nesting_overflow(text)
    if line is not None:
        raise ConfigError(
            f"{path}: line {line}",
            f"arrays and inline tables nest more than {MAX_NESTING} deep (range 0..{MAX_NESTING})",
        )
