"""bench.e2e's reading of py-spy's raw (collapsed) stacks: self time per function."""

from __future__ import annotations

from bench.e2erun import top_entries

P = 'process 7:"python -m nicd.worker";Thread 0x1 (active)'
RAW = f"""\
{P};run (bus/runtime.py:55);Runner.run (asyncio/runners.py:118) 30
{P};_drain (bus/transport.py:90);send (zmq/sugar/socket.py:701) 50
{P};_drain (bus/transport.py:91);send (zmq/sugar/socket.py:702) 15
garbage line without a count
process 7:"python -m nicd.worker";Thread 0x2 (idle);wait (threading.py:320) 5
"""


def test_top_entries_sum_self_time_per_function_across_lines() -> None:
    got = top_entries(RAW, n=2)
    assert got["samples"] == 100
    assert got["top"] == [
        {"function": "send (zmq/sugar/socket.py)", "pct": 65.0},
        {"function": "Runner.run (asyncio/runners.py)", "pct": 30.0},
    ]


def test_nothing_sampled_is_no_entries() -> None:
    assert top_entries("") == {"samples": 0, "top": []}
