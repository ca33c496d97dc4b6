"""ctl.pcap's writer: the file on disk is a whole pcap after every record, not only at close."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ctl.pcap import PcapWriter


def test_every_record_is_on_disk_whole_before_close(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    with path.open("wb") as f:  # buffered, as click opens it
        w = PcapWriter(f)
        assert path.stat().st_size == 24  # the header at once: an empty capture is valid
        for n in range(1, 4):
            w.write(1.5, bytes(60 + n))
            assert path.stat().st_size == 24 + sum(16 + 60 + i for i in range(1, n + 1))
        if shutil.which("tcpdump"):  # what a SIGKILL here would leave: tcpdump reads it
            shown = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True)
            assert shown.returncode == 0 and b"truncated" not in shown.stderr


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="make test installs tcpdump")
def test_header_only_file_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    with path.open("wb") as f:
        PcapWriter(f)
        shown = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True)
    assert shown.returncode == 0, shown.stderr
