"""The CLI's durations and counts: NaN, infinities, negatives and zero-where-meaningless are one
usage error (exit 2) naming the option, before any cluster is spoken to."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ctl.cli import main
from ctl.params import Count, Seconds

BAD_ARGS: list[tuple[list[str], str]] = [
    # (arguments, the option the error names)
    (["partition", "nic1", "nic2", "--for", "nan"], "--for"),
    (["pause", "nic1", "--for", "nan"], "--for"),
    (["pause", "nic1", "--for", "inf"], "--for"),
    (["pause", "nic1", "--for", "-inf"], "--for"),
    (["pause", "nic1", "--for", "-1"], "--for"),
    (["pause", "nic1", "--for", "0"], "--for"),  # a pause of nothing
    (["partition", "nic1", "nic2", "--for", "1e400"], "--for"),  # float() says inf
    (["kill", "nic1", "--wait", "nan"], "--wait"),
    (["wait", "--timeout", "NaN"], "--timeout"),
    (["verify", "--wait", "-0.5"], "--wait"),
    (["top", "--interval", "nan"], "--interval"),
    (["top", "--count", "-1"], "--count"),
    (["capture", "nic1/p0", "-c", "-1"], "'-c' / '--count'"),
    (["capture", "nic1/p0", "--seconds", "nan"], "--seconds"),
    (["capture", "nic1/p0", "-s", "1e9"], "'-s' / '--snaplen'"),
    (["flows", "nic1", "--limit", "-1"], "--limit"),
    (["chaos", "run", "--seconds", "inf"], "--seconds"),
    (["chaos", "run", "--seed", "-1"], "--seed"),
    (["chaos", "run", "--quiet-timeout", "nan"], "--quiet-timeout"),
]


def _options(group: click.Group) -> list[tuple[str, click.Parameter]]:
    out: list[tuple[str, click.Parameter]] = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += [(f"{name} {n}", p) for n, p in _options(cmd)]
        else:
            out += [(name, p) for p in cmd.params]
    return out


def test_every_number_option_refuses_nan() -> None:
    # click's own FloatRange lets NaN through; `up` is checked here rather than invoked (a
    # regression would launch a cluster).
    loose = [
        f"{cmd} {p.name}"
        for cmd, p in _options(main)
        if isinstance(p.type, (click.types.FloatParamType, click.types.IntParamType))
    ]
    assert loose == []


@pytest.mark.parametrize(("args", "option"), BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_duration_or_count_is_a_usage_error(
    tmp_path: Path, args: list[str], option: str
) -> None:
    result = CliRunner().invoke(main, ["--run-dir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}" in result.output or (
        f"Invalid value for '{option}'" in result.output
    ), result.output
    assert "Traceback" not in result.output


def test_the_error_says_the_range() -> None:
    result = CliRunner().invoke(main, ["pause", "nic1", "--for", "nan"])
    assert "'nan' is not a number of seconds in 0 < s <= 3600" in result.output, result.output


@pytest.mark.parametrize(("text", "value"), [("1.5", 1.5), ("3600", 3600.0), ("1e-3", 0.001)])
def test_seconds_in_range_pass(text: str, value: float) -> None:
    assert Seconds(0, 3600, lo_open=True).convert(text, None, None) == value


def test_zero_where_meaningful() -> None:
    assert Seconds(0, 600).convert("0", None, None) == 0.0
    assert Count(0).convert("0", None, None) == 0
    with pytest.raises(click.BadParameter, match="whole number"):
        Count(0).convert("1.5", None, None)
