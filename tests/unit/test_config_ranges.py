"""The range table is what default.toml documents; the nesting pre-check reads TOML right."""

from __future__ import annotations

import re
import tomllib

import pytest

from configs import DEFAULT_CONFIG
from configs.ranges import RANGES, fmt_number
from configs.rawtoml import nesting_overflow


@pytest.mark.parametrize("key", sorted(RANGES))
def test_default_toml_documents_each_range(key: str) -> None:
    text = DEFAULT_CONFIG.read_text(encoding="utf-8")
    assert re.search(rf"#.*\b{re.escape(key)}\s+{re.escape(RANGES[key].text)}", text), key


def test_default_values_are_in_range() -> None:
    # The shipped configs are the ranges' first users: every value in them fits.
    doc = tomllib.loads(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    for key, value in doc["timers"].items():
        r = RANGES[f"timers.{key}"]
        assert r.lo <= value <= r.hi, key


@pytest.mark.parametrize(
    ("x", "text"), [(1e6, "1e6"), (0.001, "0.001"), (4096, "4096"), (1 << 20, "1048576")]
)
def test_numbers_read_as_written(x: float, text: str) -> None:
    assert fmt_number(x) == text


@pytest.mark.parametrize(
    "text",
    [
        'x = "' + "[" * 100 + '"\n',  # brackets in a basic string
        "x = '" + "{" * 100 + "'\n",  # in a literal string
        'x = """\n' + "[" * 100 + '\n"""\n',  # in multi-line strings
        "x = '''\n" + "[" * 100 + "\n'''\n",
        'x = "\\"' + "[" * 100 + '"\n',  # after an escaped quote
        "# " + "[" * 100 + "\n",  # in a comment
        "x = " + "[" * 32 + "]" * 32 + "\n",  # exactly the limit
        "[[hosts]]\n" * 100,  # table headers close at once
    ],
)
def test_brackets_that_do_not_nest(text: str) -> None:
    assert nesting_overflow(text) is None


def test_deep_nesting_is_found_on_its_line() -> None:
    text = 'a = """\n[\n"""\n# [[[\nb = ' + "[" * 33 + "]" * 33 + "\n"
    assert nesting_overflow(text) == 5
    assert nesting_overflow("x = " + "{a = " * 33 + "1" + "}" * 33) == 1
