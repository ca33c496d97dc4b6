"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bus.transport import BusNode


@pytest.fixture
async def nodes() -> AsyncIterator[list[BusNode]]:
    """Collects the BusNodes a test makes and closes them all (linger 0) even on failure."""
    made: list[BusNode] = []
    try:
        yield made
    finally:
        for node in made:
            await node.close()
