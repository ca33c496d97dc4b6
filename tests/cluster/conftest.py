"""A real cluster from the Procfile in a temporary run directory, always cleaned up."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from ctl.cluster import BIN, REPO, Cluster, NotReady, running_cluster, stop, tagged_pids
from ctl.cluster import wait_for as wait_until
from tests.ports import unused_ports

__all__ = [
    "BIN", "REPO", "Cluster", "running_cluster", "stop", "tagged_pids", "unused_ports", "wait_for",
]  # fmt: skip
T = TypeVar("T")


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 30.0, every: float = 0.1
) -> T:
    """Poll `probe` until it returns something truthy; fail the test with `what` on timeout."""
    try:
        return wait_until(what, probe, timeout, every)
    except NotReady as e:
        pytest.fail(str(e))


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """The default cluster, launched from the Procfile exactly as `make up` does."""
    with running_cluster() as c:
        yield c
