"""The chaos checker on hand-made log events: invariants, books, fault windows, the verdict."""

from __future__ import annotations

from typing import Any

from ctl.bookseries import BookSeries
from ctl.checker import Params, format_verdict, judge

PARAMS = Params(
    flows=(("web", "tcp", "deliver"), ("udp", "udp", "deliver"), ("telnet", "tcp", "deny")),
    hosts=(("h1", ("nic1", "nic2")),),
    detect_s=0.15,
    takeover_s=0.5,
    stats_s=1.0,
)
T0, T1 = 100.0, 200.0


def ev(t: float, event: str, **fields: Any) -> dict[str, Any]:
    """An event as `ctl.logs.load` gives it (epoch seconds in `t`)."""
    return {"t": t, "event": event, "host": fields.pop("host", "h1"), **fields}


def books(web: int = 0, web_resets: int = 0, telnet_resets: int = 0, gaps: int = 0) -> dict:
    """Books as the nemesis logs them: h1's VMs send web and receive udp; ext1 the rest."""
    sender = {"sent": 100 + web, "resets": web_resets, "connects": 1 + web_resets}
    h1 = {"web": {"sender": sender, "sink": {"delivered": 100 + web}},
          "udp": {"sink": {"delivered": 50 + web, "gaps": gaps, "max_silence_ms": 20.0}},
          "telnet": {"sink": {"delivered": 0}}}  # fmt: skip
    ext1 = {"flows": {"udp": {"sent": 50 + web}, "telnet": {"resets": telnet_resets}}}
    return {"hosts": {"h1": h1}, "peers": {"ext1": ext1}}


def steady() -> list[dict[str, Any]]:
    """Boot: h1's map puts VPID 1 on nic1 and 2 on nic2, both NICs up and holding them."""
    return [
        ev(1.0, "host.start", proc="h1", vpids=[[1, "nic1", 100], [2, "nic2", 100]], epoch=1),
        ev(1.05, "host.recovered", proc="h1", epoch=1, source=None),
        ev(1.1, "map.epoch", proc="nic1", nic="nic1", epoch=1, vpids=[1]),
        ev(1.1, "map.epoch", proc="nic2", nic="nic2", epoch=1, vpids=[2]),
        ev(1.2, "host.nic.state", proc="h1", nic="nic1", state="up"),
        ev(1.2, "host.nic.state", proc="h1", nic="nic2", state="up"),
    ]


def run(middle: list[dict[str, Any]], end_books: dict | None = None, **quiet: Any) -> dict:
    """A whole nemesis run around `middle`, judged."""
    start = ev(T0, "chaos.nemesis.start", host="", seed=7, seconds=90.0, faults=["kill"],
               config="/c/default.toml", books=books())  # fmt: skip
    end = ev(T1, "chaos.quiet", host="", ok=True, seconds=1.0, problems=[], digests_ok=True,
             digests=[], books=end_books or books(web=500)) | quiet  # fmt: skip
    return judge([*steady(), start, *middle, end], PARAMS)


def invariant(verdict: dict, n: int) -> dict[str, Any]:
    return verdict["invariants"][n - 1]


def test_a_quiet_run_without_faults_is_valid() -> None:
    v = run([])
    assert v["valid"], format_verdict(v)
    web = next(r for r in v["flows"] if r["flow"] == "web")
    assert (web["delivered"], web["resets"], web["lost"]) == (500, 0, 0)
    assert "verdict: valid (seed 7)" in format_verdict(v)


def test_two_nics_holding_one_vpid_at_the_same_epoch_is_invalid() -> None:
    v = run([
        ev(150.0, "host.migrate", proc="h1", nic="nic2", epoch=2, moves=[[1, "nic2"]]),
        ev(150.1, "map.epoch", proc="nic2", nic="nic2", epoch=2, vpids=[1, 2]),
        ev(150.2, "map.epoch", proc="nic1", nic="nic1", epoch=2, vpids=[1]),  # it kept it
    ])  # fmt: skip
    assert not v["valid"]
    assert invariant(v, 1)["findings"] == ["h1 epoch 2: VPIDs [1] held by both nic1 and nic2"]
    text = format_verdict(v)
    assert "VIOLATED  1. one NIC per VPID per epoch" in text
    assert "verdict: INVALID (seed 7)" in text
    assert "replay: nicteam up --config /c/default.toml && nicteam chaos run --seconds 90 " \
           "--seed 7 --faults kill" in text  # fmt: skip


def kill_both(t: float) -> list[dict[str, Any]]:
    """Both NICs killed in one step, as the nemesis logs it: a `chaos.kill` each."""
    return [ev(t, "chaos.kill", host="", nic=n, pid=i, together=["nic1", "nic2"], step=0)
            for i, n in enumerate(("nic1", "nic2"))]  # fmt: skip


def kill_nic1(taken_over_at: float) -> list[dict[str, Any]]:
    """nic1 killed at 150; hostd moves VPID 1 to nic2, which holds it at `taken_over_at`."""
    return [
        ev(150.0, "chaos.kill", host="", nic="nic1", pid=123, step=0),
        ev(150.004, "host.nic.down", proc="h1", nic="nic1"),
        ev(150.005, "host.failover", proc="h1", nic="nic1", epoch=2, moves=[[1, "nic2"]]),
        ev(taken_over_at, "map.epoch", proc="nic2", nic="nic2", epoch=2, vpids=[1, 2]),
        ev(
            taken_over_at + 0.01,
            "team.first_frame",
            proc="nic2",
            nic="nic2",
            vpid=1,
            epoch=2,
            way="to_vm",
        ),
        ev(152.0, "map.epoch", proc="nic1", nic="nic1", epoch=2, vpids=[]),
        ev(152.5, "nic.rejoin", proc="nic1", nic="nic1"),
    ]


def test_a_kill_taken_over_in_time_is_valid_and_its_window_has_its_timeline() -> None:
    v = run(kill_nic1(150.02))
    assert v["valid"], format_verdict(v)
    (w,) = v["windows"]
    assert (w["kind"], w["targets"], w["at_s"]) == ("kill", ["nic1"], 50.0)
    assert (w["detect_ms"], w["takeover_ms"], w["window_ms"]) == (4.0, 30.0, 2500.0)


def test_a_vpid_unowned_longer_than_detection_and_takeover_is_invalid() -> None:
    v = run(kill_nic1(151.2))
    assert not v["valid"]
    (finding,) = invariant(v, 2)["findings"]
    assert finding.startswith("h1 VPID 1: unowned for 1.20 s from +50.000 s")


def test_a_vpid_whose_nic_died_and_nobody_took_it_is_invalid() -> None:
    v = run([ev(150.0, "chaos.kill", host="", nic="nic1", pid=123, step=0)])
    assert not v["valid"]
    assert "unowned for 50.00 s" in invariant(v, 2)["findings"][0]


def test_time_with_the_host_daemon_stopped_or_no_nic_up_does_not_count() -> None:
    hostd_paused = [
        ev(149.0, "chaos.hostd_pause", host="h1", pid=9, step=0),
        *kill_nic1(151.0)[:1],
        ev(150.9, "chaos.hostd_resume", host="h1", pid=9, step=0),
        *kill_nic1(151.0)[1:],
    ]
    assert run(hostd_paused)["valid"]
    # Both NICs gone: nobody could own anything until nic1 came back and got it all.
    both = [
        *kill_both(150.0),
        ev(150.01, "host.nic.down", proc="h1", nic="nic1"),
        ev(150.01, "host.nic.down", proc="h1", nic="nic2"),
        ev(152.0, "host.failback", proc="h1", nic="nic1", epoch=2, moves=[[2, "nic1"]]),
        ev(152.1, "map.epoch", proc="nic1", nic="nic1", epoch=2, vpids=[1, 2]),
    ]
    v = run(both)
    assert invariant(v, 2)["ok"], invariant(v, 2)
    assert [(b["host"], b["at_s"]) for b in v["blackouts"]] == [("h1", 50.01)]
    (kill2,) = v["windows"]  # two `chaos.kill` of one step: one fault
    assert (kill2["kind"], kill2["targets"], kill2["detect_ms"]) == ("kill2", ["nic1", "nic2"], 10)


def test_migrates_and_host_daemon_faults_have_windows_of_their_own() -> None:
    v = run([
        ev(150.0, "chaos.migrate", host="h1", vm="web1", nic="nic2", step=0),
        ev(150.002, "host.migrate", proc="h1", nic="nic2", epoch=2, moves=[[1, "nic2"]]),
        ev(150.004, "map.epoch", proc="nic2", nic="nic2", epoch=2, vpids=[1, 2]),
        ev(150.005, "map.epoch", proc="nic1", nic="nic1", epoch=2, vpids=[]),
        ev(160.0, "chaos.migrate", host="h1", vm="web1", nic="nic1", step=1),  # refused
        ev(170.0, "chaos.hostd_pause", host="h1", pid=9, step=2),
        ev(170.5, "chaos.hostd_resume", host="h1", pid=9, step=2),
    ])  # fmt: skip
    assert v["valid"], format_verdict(v)
    got = [(w["kind"], w["targets"], w["window_ms"], w["lost"]) for w in v["windows"]]
    # The refused migrate (no host decision) is no fault; the others' windows are the report's.
    assert got == [("migrate", ["nic2"], 2.0, 0), ("hostd-pause", ["h1"], 500.0, 0)]


def test_resets_of_a_deny_flow_are_no_finding_but_of_a_deliver_flow_are() -> None:
    denied = run([ev(150.0, "host.flows", proc="h1", flows=books(200)["hosts"]["h1"])],
                 end_books=books(500, telnet_resets=12))  # fmt: skip
    assert denied["valid"], format_verdict(denied)
    assert next(r for r in denied["flows"] if r["flow"] == "telnet")["resets"] is None
    reset = run([], end_books=books(500, web_resets=2))
    assert not reset["valid"]
    assert invariant(reset, 4)["findings"] == ["web: 2 connection(s) reset by +100.000 s"]
    assert reset["totals"]["resets"] == 2


def test_resets_after_every_nic_of_the_host_was_lost_are_excused() -> None:
    lost_all = [
        *kill_both(150.0),
        ev(150.01, "host.nic.down", proc="h1", nic="nic1"),
        ev(150.01, "host.nic.down", proc="h1", nic="nic2"),
        ev(152.0, "host.failback", proc="h1", nic="nic1", epoch=2, moves=[[2, "nic1"]]),
        ev(152.1, "map.epoch", proc="nic1", nic="nic1", epoch=2, vpids=[1, 2]),
        ev(160.0, "host.flows", proc="h1", flows=books(300, web_resets=1)["hosts"]["h1"]),
    ]
    v = run(lost_all, end_books=books(500, web_resets=1))
    assert invariant(v, 4)["ok"] and invariant(v, 4)["summary"] == "1 excused"


def test_a_run_that_never_got_quiet_or_whose_digests_differ_is_invalid() -> None:
    v = run([], ok=False, problems=["nic2: resyncing"])
    assert not v["valid"] and "nic2: resyncing" in invariant(v, 5)["findings"][0]
    pairs = [{"origin": "nic1", "holder": "nic2", "status": "differs"}]
    v = run([], digests_ok=False, digests=pairs)
    assert invariant(v, 3)["findings"] == ["nic1 vs nic2's copy: differs"]


def test_losses_are_charged_to_the_fault_windows_that_contain_them() -> None:
    middle = [
        ev(149.5, "host.flows", proc="h1", flows=books(100)["hosts"]["h1"]),
        ev(150.0, "chaos.link_down", host="", port="nic1/p0", step=0),
        ev(151.0, "chaos.link_up", host="", port="nic1/p0", step=0),
        ev(151.5, "host.flows", proc="h1", flows=books(200, gaps=9)["hosts"]["h1"]),
    ]
    v = run(middle, end_books=books(500, gaps=9))
    (w,) = v["windows"]
    assert (w["kind"], w["lost"], w["lost_per_flow"]) == ("link", 9, {"udp": 9})
    assert v["totals"]["lost"] == 9


def test_books_of_an_endpoint_that_restarted_carry_on_from_what_it_had() -> None:
    h1 = books(400, web_resets=1)["hosts"]["h1"]
    restarted = books(-90)["hosts"]["h1"]  # its daemon came back: books from (about) zero
    series = BookSeries([
        ev(1.0, "host.flows", proc="h1", flows=h1),
        ev(2.0, "host.flows", proc="h1", flows=restarted),
    ])  # fmt: skip
    assert series.at(2.0)["web"]["sent"] == 500 + 10
    assert series.at(2.0)["web"]["resets"] == 1
    assert series.at(0.5) == {}
    # Another boot of the host daemon restarts the books even when no count went down.
    again = books(500)["hosts"]["h1"]
    series = BookSeries([
        ev(1.0, "host.flows", proc="h1", flows=h1, boot=1),
        ev(2.0, "host.flows", proc="h1", flows=again, boot=2),
    ])  # fmt: skip
    assert series.at(2.0)["web"]["sent"] == 500 + 600


def test_a_restarted_host_daemon_judges_with_the_map_it_recovered() -> None:
    """nic1 dies and is declared down; the host daemon is killed before nic1 is back; the new
    one recovers the map from the NICs (VPID 1 on nic2) and has declared nobody down."""
    v = run([
        *kill_nic1(150.02)[:4],
        ev(150.5, "chaos.hostd_kill", host="h1", pid=9, step=1),
        ev(150.7, "host.start", proc="h1", vpids=[[1, "nic1", 100], [2, "nic2", 100]], epoch=1),
        ev(150.9, "host.recovered", proc="h1", epoch=2, source="nic2",
           vpids=[[1, "nic2", 101], [2, "nic2", 100]]),
        ev(152.0, "map.epoch", proc="nic1", nic="nic1", epoch=2, vpids=[]),
        ev(152.1, "host.nic.state", proc="h1", nic="nic1", state="up"),
    ])  # fmt: skip
    assert invariant(v, 2)["ok"], invariant(v, 2)
    assert [w["kind"] for w in v["windows"]] == ["kill", "hostd-kill"]
    assert v["windows"][1]["window_ms"] == 400.0  # to the recovered map
