"""The benchmark's report builder (bench/zeroloss): from attempts to an arm's result (accounting,
windows, timeline, events), the targets, and docs/benchmarks.md. Pure functions, synthetic
data: no process is started."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from zeroloss import analysis, records, report  # noqa: E402
from zeroloss.records import Attempt  # noqa: E402

T0 = 1000.0
WALL0 = 1_700_000_000.0


def attempt(request: int, t: float, outcome: str = "200", *, epoch: str = "0",
            latency: float = 0.002, try_: int = 0, mode: str = "h1") -> Attempt:
    return Attempt(request=request, worker=0, mode=mode, attempt=try_, intended_s=T0 + t,
                   start_s=T0 + t, end_s=T0 + t + latency, outcome=outcome,
                   epoch=epoch if records.is_status(outcome) else "", reused=False)


def meshctl_upgrade(requested_at_s: float) -> dict[str, Any]:
    return {"label": "1.39.3 -> 1.40.0", "result": "succeeded",
            "requested_wall": WALL0 + requested_at_s,
            "events": [{"t_s": -2.0, "event": "command"}, {"t_s": 0.01, "event": "new_started"},
                       {"t_s": 0.2, "event": "new_live"}, {"t_s": 0.2, "event": "drain_start"},
                       {"t_s": 1.3, "event": "old_exited"}, {"t_s": 1.3, "event": "succeeded"},
                       {"t_s": 1.5, "event": "command_done"}],
            "detail": {}}


def naive_upgrade(requested_at_s: float) -> dict[str, Any]:
    return {"label": "1.39.3 -> 1.40.0", "result": "succeeded",
            "requested_wall": WALL0 + requested_at_s,
            "events": [{"t_s": 0.0, "event": "command"}, {"t_s": 0.0, "event": "stop_sent"},
                       {"t_s": 0.03, "event": "old_exited"},
                       {"t_s": 0.04, "event": "new_started"},
                       {"t_s": 0.15, "event": "new_live"},
                       {"t_s": 0.15, "event": "command_done"}],
            "detail": {}}


def meshctl_arm() -> dict[str, Any]:
    """10 s at 100 req/s; command at 4 s, requested at 6 s, old gone at 7.3 s; slower during."""
    attempts = []
    for i in range(1000):
        t = i * 0.01
        epoch = "0" if t < 6.2 else "1"
        latency = 0.004 if 4.0 <= t < 7.3 else 0.002
        attempts.append(attempt(i, t, epoch=epoch, latency=latency))
    return analysis.summarize_arm("meshctl", attempts, load_start=T0, load_start_wall=WALL0,
                                  duration_s=10.0, upgrades=[meshctl_upgrade(6.0)])


def naive_arm() -> dict[str, Any]:
    """The same load; stopped at 6 s: 15 refused, 2 reset, one stale retried then ok."""
    attempts = []
    for i in range(1000):
        t = i * 0.01
        if 600 <= i < 615:
            attempts.append(attempt(i, t, records.REFUSED))
        elif i in (615, 616):
            attempts.append(attempt(i, t, records.RESET))
        elif i == 617:
            attempts.append(attempt(i, t, records.STALE))
            attempts.append(attempt(i, t, "200", epoch="1", try_=1, latency=0.003))
        else:
            attempts.append(attempt(i, t, epoch="0" if t < 6.0 else "1"))
    return analysis.summarize_arm("naive", attempts, load_start=T0, load_start_wall=WALL0,
                                  duration_s=10.0, upgrades=[naive_upgrade(6.0)])


# --------------------------------------------------------------------------- records, analysis


def test_a_retried_request_is_one_request_with_the_retrys_outcome() -> None:
    reqs = records.fold([attempt(1, 0.0, records.STALE), attempt(1, 0.0, "200", try_=1),
                         attempt(2, 0.1, records.REFUSED)])
    acc = records.account(reqs)
    assert (acc.requests, acc.attempts, acc.ok, acc.failed) == (2, 3, 1, 1)
    assert acc.outcomes == {"200": 1, records.REFUSED: 1}
    assert acc.retried == {records.STALE: 1}


def test_attempts_survive_the_columns_a_worker_writes() -> None:
    attempts = [attempt(1, 0.0), attempt(2, 0.5, records.TIMEOUT, mode="h2")]
    assert records.from_columns(records.to_columns(attempts)) == attempts


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert analysis.percentile(values, 50) == 50.0
    assert analysis.percentile(values, 99) == 99.0
    assert analysis.percentile(values, 100) == 100.0
    assert analysis.percentile([3.0], 99) == 3.0
    assert analysis.percentile([], 50) is None


def test_the_upgrade_window_runs_from_the_command_to_the_old_generation_gone() -> None:
    arm = meshctl_arm()
    assert arm["windows"] == {"before": [1.0, 4.0], "during": [4.0, 7.3],
                              "handover": [6.0, 7.3], "after": [7.3, 10.0]}
    assert arm["latency"]["before"]["p99_ms"] == pytest.approx(2.0)
    assert arm["latency"]["during"]["p99_ms"] == pytest.approx(4.0)
    assert arm["p99_ratio"] == pytest.approx(2.0)
    assert arm["accounting"]["by_epoch"] == {"0": 620, "1": 380}


def test_events_are_placed_on_the_loads_time_axis() -> None:
    events = {e["event"]: e["t_s"] for e in meshctl_arm()["events"]}
    assert events["command"] == pytest.approx(4.0)
    assert events["new_live"] == pytest.approx(6.2)
    assert events["old_exited"] == pytest.approx(7.3)


def test_the_timeline_accounts_for_every_request_once() -> None:
    arm = naive_arm()
    tl = arm["timeline"]
    assert tl["bins"] == 100
    ok = sum(sum(v) for v in tl["ok_by_epoch"].values())
    failed = sum(sum(v) for v in tl["failed_by_outcome"].values())
    assert ok + failed == arm["accounting"]["requests"] == 1000
    assert failed == arm["accounting"]["failed"] == 17
    assert tl["failed_by_outcome"][records.REFUSED][60] == 10  # 6.00-6.09 s
    assert sum(tl["retried"]) == 1
    assert tl["p99_ms"][0] == pytest.approx(2.0)


def test_the_targets_say_met_or_not_met_with_the_figures() -> None:
    scenarios = {"one-upgrade": {"arms": {"meshctl": meshctl_arm(), "naive": naive_arm()}}}
    supervisor = {"cpu_pct_of_one_core": 0.4, "cpu_s": 0.04, "idle_s": 10.0,
                  "rss_mb_max": 72.0}
    targets = {t["target"]: t for t in analysis.targets(scenarios, supervisor)}

    zero = targets["one-upgrade: 0 failed requests with meshctl"]
    assert zero["met"] and zero["value"] == "0 of 1,000 (naive: 17 of 1,000)"
    p99 = targets["one-upgrade: p99 during the upgrade window <= 1.5x p99 before"]
    assert not p99["met"] and p99["value"].startswith("2.00x")
    assert targets["supervisor CPU while idle < 1% of one core"]["met"]
    assert not targets["supervisor RSS < 60 MB"]["met"]


def round_arm(during_ms: float, *, control_ms: float = 2.0, before_ms: float = 2.0,
              failed: int = 0) -> dict[str, Any]:
    """20 s at 100 req/s, command at 4 s, old gone at 7.3 s: during 4.0-7.3 s, control
    9.3-12.6 s; `before_ms` until 4 s, 2 ms elsewhere. `failed`: refused requests in the
    window."""
    attempts = []
    for i in range(2000):
        t = i * 0.01
        latency = before_ms / 1000 if t < 4.0 else 0.002
        if 4.0 <= t < 7.3:
            latency = during_ms / 1000
        elif 9.3 <= t < 12.6:
            latency = control_ms / 1000
        outcome = records.REFUSED if 500 <= i < 500 + failed else "200"
        attempts.append(attempt(i, t, outcome, epoch="0" if t < 6.2 else "1", latency=latency))
    return analysis.summarize_arm("meshctl", attempts, load_start=T0, load_start_wall=WALL0,
                                  duration_s=20.0, upgrades=[meshctl_upgrade(6.0)],
                                  samples=True)


def test_the_control_window_is_as_long_as_the_upgrade_and_after_it() -> None:
    arm = round_arm(4.0, control_ms=3.0)
    assert arm["windows"]["during"] == [4.0, 7.3]
    assert arm["control_window"] == [9.3, 12.6]
    # 330 requests each (+-1: the window edges fall on the requests' float start times)
    assert arm["latency"]["control"]["requests"] == pytest.approx(330, abs=1)
    assert arm["p99_ratio"] == 2.0 and arm["p99_ratio_control"] == 1.5
    assert len(arm["samples"]["during"]) == pytest.approx(330, abs=1)
    assert len(arm["samples"]["control"]) == arm["latency"]["control"]["requests"]
    assert len(arm["samples"]["before"]) == pytest.approx(300, abs=1)


def test_rounds_are_pooled_per_window_with_each_rounds_ratio_beside() -> None:
    # Three rounds: one slow window among three is 1/3 of the requests, so the pooled p99 is
    # the slow one's; a single slow request per round is not.
    rounds = [round_arm(2.0), round_arm(2.0, failed=2), round_arm(10.0)]
    pooled = analysis.pool(rounds)
    assert pooled["rounds"] == 3 and pooled["requests"] == 6000 and pooled["failed"] == 2
    assert pooled["round_ratios"] == [1.0, 1.0, 5.0]
    assert pooled["round_ratio_median"] == 1.0
    assert pooled["p99_ms"] == {"before": 2.0, "during": 10.0, "control": 2.0}
    assert pooled["p99_ratio"] == 5.0 and pooled["p99_ratio_control"] == 1.0

    scenarios = {"one-upgrade": {"arms": {"meshctl": rounds[0]},
                                 "pooled": {"meshctl": pooled, "naive": pooled}}}
    targets = {t["target"]: t for t in analysis.targets(scenarios, None)}
    zero = targets["one-upgrade: 0 failed requests with meshctl"]
    assert not zero["met"] and zero["value"].startswith("2 of 6,000 in 3 rounds")
    p99 = targets["one-upgrade: p99 during the upgrade window <= 1.5x p99 before"]
    assert not p99["met"]  # on the pooled ratio, not on the shown round's 1.0x
    assert p99["value"] == ("5.00x over 3 rounds (10.0 ms / 2.0 ms); rounds 1.00x, 1.00x, "
                            "5.00x; a window as long without an upgrade: 1.00x")


def test_a_before_window_noisier_than_the_control_does_not_count_as_met() -> None:
    # The before windows caught the machine's noise (p99 8 ms), the control after the
    # upgrade did not (2 ms): 1.25x "during / before" says nothing about the upgrade.
    rounds = [round_arm(10.0, control_ms=2.0) for _ in range(2)]
    for arm in rounds:
        arm["samples"]["before"] = [8.0] * len(arm["samples"]["before"])
    pooled = analysis.pool(rounds)
    assert pooled["p99_ratio"] == 1.25 and pooled["p99_ratio_control"] == 0.25
    scenarios = {"one-upgrade": {"arms": {"meshctl": rounds[0]},
                                 "pooled": {"meshctl": pooled, "naive": pooled}}}
    p99 = next(t for t in analysis.targets(scenarios, None) if "p99" in t["target"])
    assert not p99["met"]
    assert "not counted as met: the `before` windows were noisier than the control" \
        in p99["value"]


def test_a_single_arm_with_a_control_window_is_judged_like_the_pooled_rounds() -> None:
    # Scenario 4 has no rounds but keeps its load for a control window: the verdict says it,
    # and a `before` much noisier than the control does not count as met.
    calm = round_arm(2.5, control_ms=2.2)
    scenarios = {"failed-upgrades": {"arms": {"meshctl": calm}}}
    p99 = next(t for t in analysis.targets(scenarios, None) if "p99" in t["target"])
    assert p99["met"]
    assert p99["value"] == ("1.25x (2.5 ms / 2.0 ms); a window as long without an upgrade: "
                            "1.10x")

    noisy = round_arm(10.0, control_ms=2.0, before_ms=8.0)
    scenarios = {"failed-upgrades": {"arms": {"meshctl": noisy}}}
    p99 = next(t for t in analysis.targets(scenarios, None) if "p99" in t["target"])
    assert noisy["p99_ratio"] == 1.25 and noisy["p99_ratio_control"] == 0.25
    assert not p99["met"]
    assert "not counted as met: the `before` window was noisier than the control" \
        in p99["value"]


def test_a_rate_the_machine_did_not_keep_up_with_is_flagged() -> None:
    # Requests waited up to 0.5 s for a free lane in the client: the queue, not the proxy,
    # made their latency.
    attempts = [Attempt(request=i, worker=0, mode="h1", attempt=0, intended_s=T0 + i * 0.01,
                        start_s=T0 + i * 0.01 + (0.5 if i % 10 == 0 else 0.0),
                        end_s=T0 + i * 0.01 + 0.6, outcome="200", epoch="0", reused=False)
                for i in range(500)]
    arm = analysis.summarize_arm("meshctl", attempts, load_start=T0, load_start_wall=WALL0,
                                 duration_s=5.0, upgrades=[meshctl_upgrade(3.0)])
    assert arm["client_queue"]["sustained"] is False
    assert arm["client_queue"]["p99_ms"] == pytest.approx(500.0)
    target = analysis.targets({"one-upgrade": {"arms": {"meshctl": arm}}}, None)[1]
    assert "did not sustain the rate (client queue p99 500 ms)" in target["value"]
    assert meshctl_arm()["client_queue"]["sustained"] is True


# --------------------------------------------------------------------------- the page


def suite(tmp: Path) -> dict[str, Any]:
    scen = {"key": "one-upgrade", "title": "One upgrade 1.39.3 -> 1.40.0 at 100 req/s",
            "what": "70% of the closed-loop maximum",
            "arms": {"meshctl": meshctl_arm(), "naive": naive_arm()},
            "calibration": {"client_mix": {"requests": 500, "rate": 142.9, "failed": 0,
                                           "upstream_served": 500},
                            "client_h1": {"requests": 600, "rate": 150.0, "failed": 0,
                                          "upstream_served": 600},
                            "wrk_h1": {"requests": 1200, "rate": 300.0, "failed": 0,
                                       "upstream_served": 1232},
                            "client_vs_wrk": 0.5}}
    scenarios = {"one-upgrade": scen}
    supervisor = {"readings": {"one-upgrade, before the load": {
        "idle_s": 10.0, "cpu_s": 0.04, "cpu_pct_of_one_core": 0.4, "rss_mb": 41.7,
        "tcp_table": 1234}},
        "rss_readings_mb": {"one-upgrade after load": 42.0}, "cpu_pct_of_one_core": 0.4,
        "cpu_s": 0.04, "idle_s": 10.0, "rss_mb_max": 42.0}
    return {"command": "python bench/proof.py", "generated_utc": "2026-11-25T12:00:00+00:00",
            "duration_s": 600.0, "smoke": False,
            "machine": {"cpus": 2, "platform": "Linux", "loadavg_at_start": [1.0, 1.5, 2.0],
                        "loadavg_at_end": [2.0, 2.0, 2.0], "others_at_start": {"envoy": 3},
                        "others_at_end": {}},
            "envoy": {"old": "1.39.3", "new": "1.40.0"}, "supervisor": supervisor,
            "targets": analysis.targets(scenarios, supervisor), "scenarios": scenarios,
            "images": {"one-upgrade": str(tmp / "docs" / "img" / "proof-one-upgrade.png")},
            "results": {"one-upgrade": str(tmp / "bench" / "results" / "one-upgrade.json")}}


def test_the_page_links_the_hand_written_benchmarks_near_the_top(tmp_path: Path) -> None:
    page = report.build_markdown(suite(tmp_path), tmp_path / "docs" / "benchmarks.md")
    head = page.splitlines()[:8]
    assert any("(benchmarks-upgrade-drain.md)" in line for line in head)
    assert page.startswith("# Benchmarks")


def test_the_page_has_the_targets_the_arms_and_the_picture(tmp_path: Path) -> None:
    page = report.build_markdown(suite(tmp_path), tmp_path / "docs" / "benchmarks.md")

    assert "| one-upgrade: 0 failed requests with meshctl | 0 of 1,000 (naive: 17 of 1,000) " \
           "| **met** |" in page
    assert "| **not met** |" in page  # the p99 ratio of 2x
    meshctl_row = next(line for line in page.splitlines() if line.startswith("| **meshctl**"))
    naive_row = next(line for line in page.splitlines() if line.startswith("| **naive**"))
    assert "| 1,000 | **0** | - | - | 0 620, 1 380 |" in meshctl_row
    assert "2.0 ms / 2.0 ms" in meshctl_row and "2.00x" in meshctl_row
    assert "new LIVE after 0.20 s" in meshctl_row and "old gone after 1.30 s" in meshctl_row
    assert "| **17** | refused 15, reset 2 | stale 1 |" in naive_row
    assert "nothing listening until 0.15 s" in naive_row
    assert "![One upgrade 1.39.3 -> 1.40.0 at 100 req/s](img/proof-one-upgrade.png)" in page
    assert "(../bench/results/one-upgrade.json)" in page
    assert "reaches 50% of wrk's rate" in page
    assert "| 0.040 s in 10.0 s | 0.40 % | 41.7 MB | 1,234 |" in page


def test_the_page_has_a_row_per_round_and_the_pooled_one(tmp_path: Path) -> None:
    data = suite(tmp_path)
    scen = data["scenarios"]["one-upgrade"]
    summary = {"requests": 1000, "failed": 0, "p99_before_ms": 2.0, "p99_during_ms": 3.0,
               "p99_control_ms": 2.2, "p99_ratio": 1.5, "p99_ratio_control": 1.1,
               "during_s": 3.3}
    scen["rounds"] = [{"meshctl": summary, "naive": {**summary, "failed": 17}}] * 2
    scen["shown_round"] = 2
    scen["pooled"] = {arm: {"rounds": 2, "requests": 2000, "failed": 0 if arm == "meshctl"
                            else 34, "p99_ms": {"before": 2.0, "during": 3.0, "control": 2.2},
                            "p99_ratio": 1.5, "p99_ratio_control": 1.1,
                            "round_ratios": [1.5, 1.5]} for arm in ("meshctl", "naive")}
    page = report.build_markdown(data, tmp_path / "docs" / "benchmarks.md")
    assert "round 2 is the one in the table and the picture below" in page
    assert "| 1 | 1,000 | **0** | 2.0 ms / 3.0 ms / 2.2 ms | 1.50x | 1.10x | 17 | 1.50x | 1.10x |" \
        in page
    assert "| **pooled** | 2,000 | **0** | 2.0 ms / 3.0 ms / 2.2 ms | **1.50x** | 1.10x | 34 |" \
        in page


def test_a_table_cell_cannot_break_the_table() -> None:
    assert report.table(["a"], [["x | y\nz"]]).splitlines()[-1] == "| x \\| y z |"


def test_several_upgrades_are_summed_up_with_their_spread() -> None:
    ups = [meshctl_upgrade(1.0), meshctl_upgrade(5.0)]
    ups[1]["events"][4]["t_s"] = 1.7
    assert report.upgrades_cell("meshctl", ups) == (
        "2 succeeded; old gone after 1.30 / 1.50 / 1.70 s (min / median / max)")


def test_the_picture_is_drawn_when_every_request_failed(tmp_path: Path) -> None:
    # An upstream that never answered: no latency to put on the log scale, still a picture.
    from zeroloss import plot  # noqa: PLC0415  (matplotlib: only this test draws)

    attempts = [attempt(i, i * 0.01, "503") for i in range(500)]
    arm = analysis.summarize_arm("meshctl", attempts, load_start=T0, load_start_wall=WALL0,
                                 duration_s=5.0, upgrades=[meshctl_upgrade(3.0)])
    out = tmp_path / "all-failed.png"
    plot.plot_scenario("all failed", {"meshctl": arm}, out)
    assert out.stat().st_size > 1000
