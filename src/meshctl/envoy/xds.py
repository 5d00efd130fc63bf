"""What a generation got from its control plane, and whether a new one has all its parent had.

`XdsView` is read from a generation's admin API (`read_view`) and parsed by pure functions
(unit-tested on admin answers captured from Envoy 1.40.0). `parity` decides whether a held new
generation (see `meshctl.envoy.gate`) may go LIVE: Envoy drains every listener of the parent
the moment the child is LIVE, so whatever the child lacks then is an outage, not a warning.

The rules, in order (every one measured on this machine, see docs/xds.md):
- every listener of the parent is in the child, on the same address, unless the upgrade
  changes the config or the caller accepts a listener change; a listener the child has and
  the parent had not is fine (the control plane added one);
- every route config the child's listeners name over RDS has arrived (a listener whose RDS
  never came answers 404 to everything);
- every cluster that had endpoints in the parent has endpoints in the child (EDS silent: the
  cluster is there, empty, and answers 503), unless the config changes;
- a child with no listener at all never replaces a parent that had some.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshctl.envoy.admin import AdminClient
from meshctl.envoy.gate import GATE_NAME

_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_CP_STATS = (r"^control_plane\.connected_state$|^listener_manager\.lds\.update_|"
             r"^cluster_manager\.cds\.update_|^listener_manager\.lds\.version_text$")


def is_xds_driven(config: Path) -> bool:
    """Whether a bootstrap takes resources from a control plane (`dynamic_resources`). A file
    that cannot be read or parsed is not: pre-flight reports that file on its own."""
    try:
        text = config.read_text()
        # Asked at every upgrade, on the supervisor's loop beside a serving Envoy: a config
        # that does not name dynamic_resources is static without parsing it (a YAML parse is
        # ~1.8 ms of pure Python for a 1 kB config).
        if "dynamic_resources" not in text:
            return False
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    dyn = data.get("dynamic_resources") if isinstance(data, dict) else None
    return isinstance(dyn, dict) and any(
        dyn.get(key) for key in ("lds_config", "cds_config", "ads_config"))


@dataclass(frozen=True)
class ControlPlaneHealth:
    """The control plane as a generation sees it (Envoy's own stats)."""

    connected: bool | None
    """`control_plane.connected_state`: 1 while the ADS stream is up, also while the server is
    silent on it (measured); None when Envoy has no such stat (no ADS)."""
    lds_updates: int = 0
    lds_rejected: int = 0
    cds_updates: int = 0
    cds_rejected: int = 0
    last_update_ms: int = 0
    """Epoch milliseconds of the last accepted LDS or CDS update (0: never)."""

    def to_json(self) -> dict[str, Any]:
        return {"connected": self.connected, "lds_updates": self.lds_updates,
                "lds_rejected": self.lds_rejected, "cds_updates": self.cds_updates,
                "cds_rejected": self.cds_rejected,
                "last_update_at": self.last_update_ms / 1000 if self.last_update_ms else None}


@dataclass(frozen=True)
class XdsView:
    """One generation's resources, as its admin API shows them."""

    listeners: Mapping[str, str] = field(default_factory=dict)
    """Listener name -> address (`host:port`), the gate excluded."""
    routes: frozenset[str] = frozenset()
    """RDS route configs received."""
    rds_wanted: frozenset[str] = frozenset()
    """RDS route configs its listeners name."""
    clusters: int = 0
    clusters_with_endpoints: frozenset[str] = frozenset()
    endpoints: int = 0
    control_plane: ControlPlaneHealth | None = None

    def summary(self) -> dict[str, Any]:
        return {"listeners": dict(sorted(self.listeners.items())),
                "routes": len(self.routes), "clusters": self.clusters,
                "endpoints": self.endpoints}


@dataclass(frozen=True)
class Parity:
    """What the new generation lacks compared with its parent; empty lists: none."""

    missing_listeners: tuple[str, ...] = ()
    moved_listeners: tuple[str, ...] = ()
    missing_routes: tuple[str, ...] = ()
    empty_clusters: tuple[str, ...] = ()
    no_listeners: bool = False
    accepted_listener_change: bool = False
    """The caller (or a config change) let listeners go; reported, not held for."""

    @property
    def complete(self) -> bool:
        return not (self.missing_routes or self.empty_clusters or self.no_listeners or (
            (self.missing_listeners or self.moved_listeners)
            and not self.accepted_listener_change))

    def reason(self) -> str:
        parts = []
        if self.no_listeners:
            parts.append("no listener at all")
        if self.missing_listeners:
            parts.append(f"listener(s) missing: {_few(self.missing_listeners)}")
        if self.moved_listeners:
            parts.append(f"listener(s) on another address: {_few(self.moved_listeners)}")
        if self.missing_routes:
            parts.append(f"route config(s) not received: {_few(self.missing_routes)}")
        if self.empty_clusters:
            parts.append(f"cluster(s) without endpoints: {_few(self.empty_clusters)}")
        return "; ".join(parts) or "nothing missing"

    def to_json(self) -> dict[str, Any]:
        return {"complete": self.complete, "missing_listeners": list(self.missing_listeners),
                "moved_listeners": list(self.moved_listeners),
                "missing_routes": list(self.missing_routes),
                "empty_clusters": list(self.empty_clusters)[:20],
                "no_listeners": self.no_listeners,
                "accepted_listener_change": self.accepted_listener_change}


def _few(names: tuple[str, ...], keep: int = 5) -> str:
    more = f" and {len(names) - keep} more" if len(names) > keep else ""
    return ", ".join(names[:keep]) + more


def parity(old: XdsView, new: XdsView, *, config_changed: bool,
           listener_change_ok: bool = False) -> Parity:
    """Pure: what `new` lacks of `old` (module docstring: the rules)."""
    missing = tuple(sorted(set(old.listeners) - set(new.listeners)))
    moved = tuple(sorted(n for n, a in old.listeners.items()
                         if n in new.listeners and new.listeners[n] != a))
    empty = () if config_changed else tuple(sorted(
        old.clusters_with_endpoints - new.clusters_with_endpoints))
    return Parity(
        missing_listeners=missing, moved_listeners=moved,
        missing_routes=tuple(sorted(new.rds_wanted - new.routes)),
        empty_clusters=empty,
        no_listeners=bool(old.listeners) and not new.listeners,
        accepted_listener_change=config_changed or listener_change_ok,
    )


# --------------------------------------------------------------------------- parsing (pure)


def _address(addr: Any) -> str:
    sock = (addr or {}).get("socket_address") or {}
    if sock:
        return f"{sock.get('address', '')}:{sock.get('port_value', 0)}"
    pipe = (addr or {}).get("pipe") or {}
    return f"unix:{pipe.get('path', '')}" if pipe else "?"


def listeners_from(listeners_json: Any) -> dict[str, str]:
    """`/listeners?format=json`: name -> address, the gate left out."""
    out: dict[str, str] = {}
    for item in (listeners_json or {}).get("listener_statuses", []):
        name = str(item.get("name", ""))
        if name and name != GATE_NAME:
            out[name] = _address(item.get("local_address"))
    return out


def rds_names_from(listeners_dump: Any) -> frozenset[str]:
    """`/config_dump?resource=dynamic_listeners` (and static): every RDS route config name
    an HTTP connection manager of a listener (active or warming) asks for."""
    names: set[str] = set()
    for item in (listeners_dump or {}).get("configs", []):
        for state in ("active_state", "warming_state"):
            listener = (item.get(state) or {}).get("listener")
            if listener is None and state == "active_state":
                listener = item.get("listener")  # static listeners
            if not listener or listener.get("name") == GATE_NAME:
                continue
            for chain in [*listener.get("filter_chains", []),
                          listener.get("default_filter_chain") or {}]:
                for flt in chain.get("filters", []):
                    cfg = flt.get("typed_config") or {}
                    if str(cfg.get("@type", "")).endswith(_HCM) and cfg.get("rds"):
                        names.add(str(cfg["rds"].get("route_config_name", "")))
    return frozenset(names)


def routes_from(routes_dump: Any) -> frozenset[str]:
    """`/config_dump?resource=dynamic_route_configs`: names of route configs received."""
    return frozenset(
        str((item.get("route_config") or {}).get("name", ""))
        for item in (routes_dump or {}).get("configs", [])
        if (item.get("route_config") or {}).get("name"))


def _stats(stats_json: Any) -> dict[str, Any]:
    return {str(s.get("name")): s.get("value") for s in (stats_json or {}).get("stats", [])
            if "name" in s}


def endpoints_from(stats_json: Any) -> tuple[int, frozenset[str], int]:
    """`/stats?format=json&filter=membership_total$`: (clusters, clusters with endpoints,
    endpoints), the gate's own cluster left out. Cluster names may hold dots (Istio's
    `outbound|80||svc.ns.svc.cluster.local`): cut the fixed prefix and suffix only."""
    clusters = 0
    with_endpoints: set[str] = set()
    total = 0
    for name, value in _stats(stats_json).items():
        if not (name.startswith("cluster.") and name.endswith(".membership_total")):
            continue
        cluster = name[len("cluster."):-len(".membership_total")]
        if cluster == GATE_NAME:
            continue
        clusters += 1
        if isinstance(value, int) and value > 0:
            with_endpoints.add(cluster)
            total += value
    return clusters, frozenset(with_endpoints), total


def health_from(stats_json: Any) -> ControlPlaneHealth:
    stats = _stats(stats_json)

    def num(key: str) -> int:
        value = stats.get(key)
        return value if isinstance(value, int) else 0

    connected = stats.get("control_plane.connected_state")
    return ControlPlaneHealth(
        connected=None if not isinstance(connected, int) else connected == 1,
        lds_updates=num("listener_manager.lds.update_success"),
        lds_rejected=num("listener_manager.lds.update_rejected"),
        cds_updates=num("cluster_manager.cds.update_success"),
        cds_rejected=num("cluster_manager.cds.update_rejected"),
        last_update_ms=max(num("listener_manager.lds.update_time"),
                           num("cluster_manager.cds.update_time")),
    )


# --------------------------------------------------------------------------- I/O (thin)


def read_health(admin: AdminClient) -> ControlPlaneHealth:
    return health_from(admin.get_json(f"/stats?format=json&filter={_CP_STATS}"))


def read_view(admin: AdminClient, *, with_endpoints: bool = True) -> XdsView:
    """Five admin requests; raises AdminUnavailable. `with_endpoints=False` skips the cluster
    stats (the costliest: one stat per cluster, 2,000 clusters in a mesh-sized config)."""
    listeners = listeners_from(admin.get_json("/listeners?format=json"))
    rds = (rds_names_from(admin.get_json("/config_dump?resource=dynamic_listeners"))
           | rds_names_from(admin.get_json("/config_dump?resource=static_listeners")))
    routes = routes_from(admin.get_json("/config_dump?resource=dynamic_route_configs"))
    clusters, with_eps, endpoints = (
        endpoints_from(admin.get_json("/stats?format=json&filter=membership_total$"))
        if with_endpoints else (0, frozenset(), 0))
    return XdsView(listeners=listeners, routes=routes, rds_wanted=rds, clusters=clusters,
                   clusters_with_endpoints=with_eps, endpoints=endpoints,
                   control_plane=read_health(admin))
