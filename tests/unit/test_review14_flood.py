"""Issue 14 review: a peer with a valid key of the cluster (h2's NIC, say) must not flood a NIC's
logs with messages it may not send; they are counted, and logged the 1st, 2nd, 4th... time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from structlog.testing import capture_logs

from bus.messages import FrameBatch, Handover, HandoverKind
from bus.testing import MemoryNetwork
from configs import load_config
from nicd.worker import NicWorker

FRAME = b"\0" * 60


async def test_frames_and_handovers_from_a_nic_of_another_host_do_not_flood_the_logs(
    tmp_path: Path,
) -> None:
    config = load_config(Path("configs/two-hosts.toml"), tmp_path)
    assert config.nic("nic3").host != config.nic("nic1").host
    worker = NicWorker(
        config, config.nic("nic1"), MemoryNetwork().node("nic1", config.endpoint("nic1"))
    )
    with capture_logs() as logs:
        for _ in range(1000):
            worker._handle([("nic3", FrameBatch("nic3", [(1, FRAME)]))])
            worker._handle([("nic3", Handover("nic3", HandoverKind.DELIVER, [(1, FRAME)]))])
    events = Counter(e["event"] for e in logs)
    assert events["nic.drop.unexpected_frames"] <= 11  # log2(1000) + 1
    assert events["nic.drop.unexpected_handover"] <= 11
    assert worker.unexpected == {
        "nic.drop.unexpected_frames": 1000,
        "nic.drop.unexpected_handover": 1000,
    }
