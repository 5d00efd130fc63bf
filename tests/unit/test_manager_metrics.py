"""The supervisor's Prometheus metrics (`meshctl.manager.metrics`), read back as a scraper
would: rendered, then parsed by prometheus_client's own text parser."""

from __future__ import annotations

import math

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from meshctl.manager.metrics import Metrics

Labels = frozenset[tuple[str, str]]


def scrape(metrics: Metrics) -> dict[tuple[str, Labels], float]:
    body, _ = metrics.render()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return scrape(metrics)[(name, frozenset(labels.items()))]


def series(metrics: Metrics, name: str) -> list[dict[str, str]]:
    body, _ = metrics.render()
    return [
        dict(sample.labels)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name
    ]


SUCCEEDED = {"result": "succeeded", "total_s": 12.5, "drain_s": 10.0, "live_after_s": 1.5,
             "forced_closes": 3}


def test_a_fresh_registry_shows_every_known_label_at_zero_and_no_epoch() -> None:
    m = Metrics()
    for result in ("succeeded", "rolled_back", "aborted"):
        assert value(m, "meshctl_upgrades_total", result=result) == 0
    for reason in ("crash", "recovery"):
        assert value(m, "meshctl_envoy_restarts_total", reason=reason) == 0
    assert value(m, "meshctl_forced_closes_total") == 0
    assert value(m, "meshctl_ready") == 0
    assert value(m, "meshctl_drain_connections") == 0
    assert math.isnan(value(m, "meshctl_epoch"))
    assert series(m, "meshctl_envoy_info") == []


def test_a_succeeded_upgrade_is_counted_and_its_durations_observed() -> None:
    m = Metrics()
    m.upgrade_finished(SUCCEEDED)
    assert value(m, "meshctl_upgrades_total", result="succeeded") == 1
    assert value(m, "meshctl_upgrades_total", result="rolled_back") == 0
    assert value(m, "meshctl_upgrade_duration_seconds_count") == 1
    assert value(m, "meshctl_upgrade_duration_seconds_sum") == 12.5
    assert value(m, "meshctl_upgrade_duration_seconds_bucket", le="10.0") == 0
    assert value(m, "meshctl_upgrade_duration_seconds_bucket", le="15.0") == 1
    assert value(m, "meshctl_drain_duration_seconds_sum") == 10.0
    assert value(m, "meshctl_new_generation_live_seconds_sum") == 1.5
    assert value(m, "meshctl_forced_closes_total") == 3


def test_histogram_buckets_span_half_a_second_to_ten_minutes() -> None:
    m = Metrics()
    buckets = series(m, "meshctl_upgrade_duration_seconds_bucket")
    bounds = [float(labels["le"]) for labels in buckets]
    assert min(bounds) == 0.5
    assert math.inf in bounds
    assert max(b for b in bounds if b != math.inf) == 600.0


def test_durations_an_upgrade_never_reached_are_not_observed() -> None:
    m = Metrics()
    m.upgrade_finished({"result": "rolled_back", "total_s": 3.0, "drain_s": None,
                        "live_after_s": None, "forced_closes": 0})
    assert value(m, "meshctl_upgrades_total", result="rolled_back") == 1
    assert value(m, "meshctl_upgrade_duration_seconds_count") == 1
    assert value(m, "meshctl_drain_duration_seconds_count") == 0
    assert value(m, "meshctl_new_generation_live_seconds_count") == 0
    assert value(m, "meshctl_forced_closes_total") == 0


def test_upgrades_accumulate_per_result() -> None:
    m = Metrics()
    m.upgrade_finished(SUCCEEDED)
    m.upgrade_finished(SUCCEEDED)
    m.upgrade_finished({"result": "aborted", "total_s": None, "drain_s": None,
                        "live_after_s": None, "forced_closes": 0})
    assert value(m, "meshctl_upgrades_total", result="succeeded") == 2
    assert value(m, "meshctl_upgrades_total", result="aborted") == 1
    assert value(m, "meshctl_forced_closes_total") == 6


def test_an_unknown_upgrade_result_is_not_counted_and_adds_no_series() -> None:
    m = Metrics()
    m.upgrade_finished({**SUCCEEDED, "result": "in_progress"})
    assert {labels["result"] for labels in series(m, "meshctl_upgrades_total")} == {
        "succeeded", "rolled_back", "aborted"}
    assert value(m, "meshctl_upgrade_duration_seconds_count") == 0


def test_envoy_restarts_are_counted_by_reason() -> None:
    m = Metrics()
    m.envoy_restarted("crash")
    m.envoy_restarted("crash")
    m.envoy_restarted("recovery")
    m.envoy_restarted("boredom")
    assert value(m, "meshctl_envoy_restarts_total", reason="crash") == 2
    assert value(m, "meshctl_envoy_restarts_total", reason="recovery") == 1
    assert len(series(m, "meshctl_envoy_restarts_total")) == 2


def test_envoy_info_keeps_only_the_live_version() -> None:
    m = Metrics()
    m.set_live(0, "1.39.0")
    assert series(m, "meshctl_envoy_info") == [{"version": "1.39.0"}]
    assert value(m, "meshctl_epoch") == 0
    m.set_live(1, "1.40.0")
    assert series(m, "meshctl_envoy_info") == [{"version": "1.40.0"}]
    assert value(m, "meshctl_envoy_info", version="1.40.0") == 1
    assert value(m, "meshctl_epoch") == 1


def test_nothing_live_clears_envoy_info_and_the_epoch() -> None:
    m = Metrics()
    m.set_live(4, "1.40.0")
    m.set_live(None, None)
    assert series(m, "meshctl_envoy_info") == []
    assert math.isnan(value(m, "meshctl_epoch"))


def test_ready_and_drain_connections_are_gauges_that_follow_the_last_value() -> None:
    m = Metrics()
    m.set_ready(True)
    m.set_drain_connections(17)
    assert value(m, "meshctl_ready") == 1
    assert value(m, "meshctl_drain_connections") == 17
    m.set_ready(False)
    m.set_drain_connections(None)
    assert value(m, "meshctl_ready") == 0
    assert value(m, "meshctl_drain_connections") == 0


def test_render_gives_the_prometheus_text_format_and_its_content_type() -> None:
    body, content_type = Metrics().render()
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST
    assert content_type.startswith("text/plain")
    assert b"# TYPE meshctl_upgrades_total counter" in body


def test_two_registries_in_one_process_neither_clash_nor_touch_the_global_one() -> None:
    a, b = Metrics(), Metrics()
    a.set_ready(True)
    assert value(a, "meshctl_ready") == 1
    assert value(b, "meshctl_ready") == 0
    global_body = prometheus_client.generate_latest(prometheus_client.REGISTRY)
    assert b"meshctl_" not in global_body


def _sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels or None)


def test_the_live_generations_control_plane_is_exported_and_unknown_is_nan() -> None:
    m = Metrics()
    assert math.isnan(_sample(m, "meshctl_xds_connected") or 0.0)
    m.set_xds({"listeners": {"a": "127.0.0.1:1"}, "control_plane": {
        "connected": False, "last_update_at": 1796623383.641, "lds_rejected": 2,
        "cds_rejected": 1}})
    assert _sample(m, "meshctl_xds_connected") == 0
    assert _sample(m, "meshctl_xds_last_update_timestamp_seconds") == 1796623383.641
    assert _sample(m, "meshctl_xds_rejected_updates") == 3
    assert _sample(m, "meshctl_xds_listeners") == 1
    m.set_xds({"listeners": {}, "control_plane": None})
    assert math.isnan(_sample(m, "meshctl_xds_connected") or 0.0)


def test_each_gated_upgrade_is_counted_by_what_the_gate_did_and_lost_listeners_are_summed(
) -> None:
    m = Metrics()
    released = {"state": "released", "parity": {"missing_listeners": []}}
    changed = {"state": "released", "parity": {"missing_listeners": ["l1", "l2"]}}
    held = {"state": "held", "parity": {"missing_listeners": ["l1"]}}
    for gate, result in ((released, "succeeded"), (changed, "succeeded"),
                         (held, "rolled_back")):
        m.upgrade_finished({"result": result, "xds": gate})
    assert _sample(m, "meshctl_xds_gate_total", outcome="released") == 1
    assert _sample(m, "meshctl_xds_gate_total", outcome="released_listener_change") == 1
    assert _sample(m, "meshctl_xds_gate_total", outcome="held") == 1
    assert _sample(m, "meshctl_listeners_lost_total") == 2
