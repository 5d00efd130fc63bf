"""The xDS view and the parity rules (pure), on admin answers captured from Envoy 1.40.0 serving
a config from `meshctl.demo.controlplane` (tests/unit/data/envoy-1.40-*.json); and the gate's
--config-yaml."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.envoy import gate, xds
from meshctl.envoy.argv import LaunchSpec, build_argv, check_extra_args
from meshctl.errors import BadInput

DATA = Path(__file__).parent / "data"


def captured(name: str) -> Any:
    return json.loads((DATA / f"envoy-1.40-{name}.json").read_text())


def view(listeners: dict[str, str], *, routes: set[str] | None = None,
         wanted: set[str] | None = None, with_endpoints: set[str] | None = None) -> xds.XdsView:
    return xds.XdsView(listeners=listeners, routes=frozenset(routes or ()),
                       rds_wanted=frozenset(wanted or ()),
                       clusters_with_endpoints=frozenset(with_endpoints or ()))


OLD = view({"a": "127.0.0.1:1", "b": "127.0.0.1:2"}, routes={"ra", "rb"},
           wanted={"ra", "rb"}, with_endpoints={"c0", "c1"})


def test_listeners_are_read_by_name_and_address_from_envoys_listener_statuses() -> None:
    got = xds.listeners_from(captured("listeners"))
    assert got == {"listener_55987": "127.0.0.1:55987", "listener_50359": "127.0.0.1:50359"}


def test_the_gate_listener_is_never_counted_as_a_listener_of_the_user() -> None:
    statuses = captured("listeners")
    statuses["listener_statuses"].append({"name": gate.GATE_NAME, "local_address": {
        "socket_address": {"address": "127.255.255.254", "port_value": 15099}}})
    assert gate.GATE_NAME not in xds.listeners_from(statuses)


def test_rds_names_come_from_every_http_connection_manager_of_the_listeners() -> None:
    assert xds.rds_names_from(captured("dynamic_listeners")) == {"route_55987", "route_50359"}
    assert xds.rds_names_from(captured("static_listeners")) == frozenset()


def test_received_route_configs_are_read_from_the_config_dump() -> None:
    assert xds.routes_from(captured("dynamic_route_configs")) == {"route_55987", "route_50359"}


def test_endpoints_are_counted_per_cluster_even_when_cluster_names_hold_dots() -> None:
    stats = captured("membership")
    stats["stats"] += [
        {"name": "cluster.outbound|80||web.shop.svc.cluster.local.membership_total", "value": 3},
        {"name": "cluster.empty.membership_total", "value": 0},
        {"name": f"cluster.{gate.GATE_NAME}.membership_total", "value": 1},
    ]
    clusters, with_endpoints, total = xds.endpoints_from(stats)
    assert clusters == 5  # cluster_0, cluster_1, xds, outbound..., empty; not the gate's
    assert "outbound|80||web.shop.svc.cluster.local" in with_endpoints
    assert "empty" not in with_endpoints
    assert total == 6


def test_control_plane_health_is_read_from_envoys_own_stats() -> None:
    health = xds.health_from(captured("control_plane"))
    assert health.connected is True
    assert (health.lds_updates, health.cds_updates) == (1, 1)
    assert health.lds_rejected == health.cds_rejected == 0
    assert health.last_update_ms == 1796623383641
    assert xds.health_from({"stats": []}).connected is None


def test_a_new_generation_with_everything_its_parent_had_is_complete() -> None:
    new = view(dict(OLD.listeners), routes={"ra", "rb"}, wanted={"ra", "rb"},
               with_endpoints={"c0", "c1", "c2"})
    assert xds.parity(OLD, new, config_changed=False).complete


def test_a_listener_more_than_the_parent_is_fine() -> None:
    new = view({**OLD.listeners, "c": "127.0.0.1:3"}, with_endpoints={"c0", "c1"})
    assert xds.parity(OLD, new, config_changed=False).complete


def test_a_vanished_listener_holds_the_generation_unless_the_change_is_accepted() -> None:
    new = view({"a": "127.0.0.1:1"}, with_endpoints={"c0", "c1"})
    held = xds.parity(OLD, new, config_changed=False)
    assert not held.complete
    assert held.reason() == "listener(s) missing: b"
    assert xds.parity(OLD, new, config_changed=False, listener_change_ok=True).complete
    assert xds.parity(OLD, new, config_changed=True).complete


def test_a_listener_on_another_address_holds_the_generation() -> None:
    new = view({"a": "127.0.0.1:1", "b": "0.0.0.0:2"}, with_endpoints={"c0", "c1"})
    assert xds.parity(OLD, new, config_changed=False).moved_listeners == ("b",)


def test_a_listener_whose_route_config_never_came_holds_even_with_a_config_change() -> None:
    new = view(dict(OLD.listeners), routes={"ra"}, wanted={"ra", "rb"},
               with_endpoints={"c0", "c1"})
    result = xds.parity(OLD, new, config_changed=True)
    assert not result.complete
    assert result.missing_routes == ("rb",)


def test_a_cluster_emptied_by_a_silent_eds_holds_the_generation() -> None:
    new = view(dict(OLD.listeners), with_endpoints={"c0"})
    result = xds.parity(OLD, new, config_changed=False)
    assert result.empty_clusters == ("c1",) and not result.complete


def test_a_generation_without_any_listener_never_replaces_one_that_had_some() -> None:
    new = view({})
    result = xds.parity(OLD, new, config_changed=True, listener_change_ok=True)
    assert result.no_listeners and not result.complete


@pytest.mark.parametrize(("text", "driven"), [
    ("dynamic_resources: {lds_config: {ads: {}}}\n", True),
    ("dynamic_resources: {cds_config: {ads: {}}}\n", True),
    ("static_resources: {listeners: []}\n", False),
    ("dynamic_resources: {}\n", False),
    ("{{{ not yaml", False),
    ("", False),
])
def test_a_config_is_xds_driven_when_its_bootstrap_has_dynamic_resources(
        tmp_path: Path, text: str, driven: bool) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    assert xds.is_xds_driven(path) is driven
    assert xds.is_xds_driven(tmp_path / "missing.yaml") is False


def test_the_gate_adds_a_listener_that_binds_nothing_and_waits_forever_for_its_route() -> None:
    text = gate.config_yaml(Path("/run/meshctl dir/gate: 1.sock"), 7)
    boot = yaml.safe_load(text)
    (listener,) = boot["static_resources"]["listeners"]
    assert listener["name"] == gate.GATE_NAME and listener["bind_to_port"] is False
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == gate.route_name(7) == "meshctl_gate_7"
    assert hcm["rds"]["config_source"]["initial_fetch_timeout"] == "0s"
    (cluster,) = boot["static_resources"]["clusters"]
    endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["pipe"]["path"] == "/run/meshctl dir/gate: 1.sock"


def test_the_gate_travels_in_the_argv_and_a_users_config_yaml_is_refused() -> None:
    spec = LaunchSpec(binary=Path("/e"), config=Path("/c.yaml"), base_id=1, epoch=2,
                      socket_prefix=Path("/s/hr"), admin_address_path=Path("/s/a"),
                      drain_time_s=1, parent_shutdown_time_s=2, drain_strategy="immediate",
                      concurrency=1, config_yaml="static_resources: {}")
    argv = build_argv(spec)
    assert argv[argv.index("--config-yaml") + 1] == "static_resources: {}"
    with pytest.raises(BadInput, match="--config-yaml"):
        check_extra_args(["--config-yaml", "{}"])
