"""bench.cluster's pure parts: the configs it generates, process names, the kill rotation."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cluster import growth, kill_order, main, proc_name
from bench.clusterconf import cluster_toml
from configs import load_config


@pytest.mark.parametrize("n", [1, 2, 4])
def test_a_generated_config_loads_with_two_nics_per_host_and_the_same_flows_per_host(
    n: int, tmp_path: Path
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(cluster_toml(n))
    config = load_config(path, tmp_path / "run")
    assert [h.name for h in config.hosts] == [f"h{k}" for k in range(1, n + 1)]
    assert [[x.name for x in h.nics] for h in config.hosts] == [
        [f"nic{2 * k - 1}", f"nic{2 * k}"] for k in range(1, n + 1)
    ]
    assert len(config.flows) == 4 * n
    between = [f for f in config.flows if f.src.startswith("web") and f.dst.startswith("web")]
    assert len(between) == (n if n > 1 else 0)  # a lone host sends that flow to ext1


def test_a_host_count_out_of_range_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="hosts: 0 is outside"):
        cluster_toml(0)


def test_process_names_from_command_lines() -> None:
    py = "/x/.venv/bin/python"
    assert proc_name([py, "-m", "nicd.worker", "--config", "c", "--nic", "nic3"]) == "nic3"
    assert proc_name([py, "-m", "nicd", "--config", "c", "--nic", "nic3"]) == "nic3-card"
    assert proc_name([py, "-m", "hostd.daemon", "--config", "c", "--host", "h2"]) == "h2"
    assert proc_name([py, "-m", "hostd", "--host", "h2"]) == "h2-card"
    assert proc_name([py, "-m", "fabricd", "--config", "c"]) == "fabricd"
    assert proc_name([py, "/x/.venv/bin/honcho", "start", "-f", "P"]) == "honcho"
    shell = ["/bin/sh", "-c", "python -m nicd --config ${NICTEAM_CONFIG:-c.toml} --nic nic1"]
    assert proc_name(shell) == "sh(nic1-card)"


def test_kills_rotate_over_hosts_then_over_each_hosts_nics(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(cluster_toml(2))
    config = load_config(path, tmp_path / "run")
    assert kill_order(config, 5) == ["nic1", "nic3", "nic2", "nic4", "nic1"]


def test_growth_is_the_largest_size_over_the_smallest() -> None:
    def size(hosts: int, launch: float, cpu: float, p50: float | None) -> dict[str, object]:
        return {"hosts": hosts, "launch_s": {"nics_up": launch, "flows_delivering": launch},
                "idle_cpu_pct_total": cpu, "frames_per_s_total": 100.0 * hosts,
                "takeover_ms": {"p50": p50, "p99": p50}}  # fmt: skip

    g = growth([size(1, 1.0, 30.0, 10.0), size(4, 1.8, 120.0, None)])
    assert g["launch time"] == 1.8
    assert g["idle CPU"] == 4.0 and g["idle CPU per host"] == 1.0
    assert g["frames/s per host"] == 1.0
    assert g["takeover p50"] is None  # no takeover measured at 4 hosts: no ratio


@pytest.mark.parametrize(
    ("flag", "value"), [("--sizes", "1,x"), ("--sizes", "0"), ("--kills", "-1")]
)
def test_bad_flags_are_one_usage_error_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([flag, value])
    assert exit_.value.code == 2
    assert flag in capsys.readouterr().err
