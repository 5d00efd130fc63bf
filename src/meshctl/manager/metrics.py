"""The supervisor's Prometheus metrics: what is exported, under which names, and how an upgrade
record becomes samples.

Every `Metrics` owns its own `CollectorRegistry`, never prometheus_client's global one: several
supervisors (or tests) in one process would otherwise clash on duplicate names, and the default
registry's process collectors would describe the test runner, not Envoy.

The main loop writes (`upgrade_finished`, `set_live`, ...) and the health server's thread reads
(`render`); prometheus_client's metric objects are thread-safe, so no lock is needed here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

log = logging.getLogger(__name__)

UPGRADE_RESULTS = ("succeeded", "rolled_back", "aborted")
GATE_OUTCOMES = ("released", "released_listener_change", "held")
"""What the xDS gate did with a new generation: released it complete, released it with fewer
listeners than its parent (accepted), or held it until the upgrade was rolled back."""
RESTART_REASONS = ("crash", "recovery")

# An upgrade takes from about half a second (idle drain, drain_min_s=0) to the longest drain
# window we expect (10 min); the buckets are dense where the usual drain windows end.
DURATION_BUCKETS_S = (0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """The `meshctl_*` metrics of one supervisor, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.upgrades = Counter(
            "meshctl_upgrades_total", "Upgrades finished, by result.", ["result"], registry=r)
        self.upgrade_duration = Histogram(
            "meshctl_upgrade_duration_seconds",
            "Upgrade duration, from the request until the old generation is gone.",
            buckets=DURATION_BUCKETS_S, registry=r)
        self.drain_duration = Histogram(
            "meshctl_drain_duration_seconds",
            "Drain duration of the old generation during an upgrade.",
            buckets=DURATION_BUCKETS_S, registry=r)
        self.new_generation_live = Histogram(
            "meshctl_new_generation_live_seconds",
            "Time from an upgrade request until the new generation is LIVE.",
            buckets=DURATION_BUCKETS_S, registry=r)
        self.forced_closes = Counter(
            "meshctl_forced_closes_total",
            "Client connections still open when a drain window ended at its deadline.",
            registry=r)
        self.envoy_restarts = Counter(
            "meshctl_envoy_restarts_total",
            "Envoy generations started again outside an upgrade, by reason.",
            ["reason"], registry=r)
        self.epoch = Gauge(
            "meshctl_epoch",
            "Hot-restart epoch of the live generation (NaN when none is live).", registry=r)
        self.envoy_info = Gauge(
            "meshctl_envoy_info", "Version of the live Envoy (value 1).", ["version"], registry=r)
        self.ready = Gauge(
            "meshctl_ready", "1 when the supervisor reports ready, else 0.", registry=r)
        self.drain_connections = Gauge(
            "meshctl_drain_connections",
            "Open client connections of the generation draining (0 when none drains).",
            registry=r)
        self.xds_connected = Gauge(
            "meshctl_xds_connected",
            "1 when the live generation's gRPC stream to its control plane is up, 0 when it is "
            "down, NaN when unknown or the config is static.", registry=r)
        self.xds_last_update = Gauge(
            "meshctl_xds_last_update_timestamp_seconds",
            "When the live generation last accepted an LDS or CDS update (NaN: never).",
            registry=r)
        self.xds_rejected = Gauge(
            "meshctl_xds_rejected_updates",
            "LDS and CDS updates the live generation rejected (NACKed) since it started.",
            registry=r)
        self.xds_listeners = Gauge(
            "meshctl_xds_listeners", "Listeners of the live generation (xDS-driven configs).",
            registry=r)
        self.xds_gate = Counter(
            "meshctl_xds_gate_total",
            "New generations on an xDS-driven config, by what the gate did with them.",
            ["outcome"], registry=r)
        self.listeners_lost = Counter(
            "meshctl_listeners_lost_total",
            "Listeners of an old generation that its successor went LIVE without "
            "(an accepted listener change, or a config change).", registry=r)
        self.held_sockets = Gauge(
            "meshctl_held_listen_sockets",
            "Listening sockets of the live generation the supervisor holds a duplicate of "
            "(0: a crash would refuse connections until the restart binds them).", registry=r)
        self.held_sockets_given = Gauge(
            "meshctl_held_listen_sockets_given",
            "Held listening sockets handed to generations restarted after a crash, since the "
            "supervisor started.", registry=r)
        for outcome in GATE_OUTCOMES:
            self.xds_gate.labels(outcome=outcome)
        self.set_xds(None)
        # Known label values exist from the start at 0, so that rate() and absent() work
        # before the first upgrade or restart.
        for result in UPGRADE_RESULTS:
            self.upgrades.labels(result=result)
        for reason in RESTART_REASONS:
            self.envoy_restarts.labels(reason=reason)
        self.epoch.set(math.nan)
        self._version: str | None = None

    def upgrade_finished(self, record: Mapping[str, Any]) -> None:
        """Count one finished upgrade from the supervisor's upgrade record (`Upgrade.to_json`).

        Durations that the upgrade never reached (None: rolled back before LIVE, no drain) are
        not observed. An unknown result is logged and ignored: a metric must never stop the
        supervisor, and a free-form label would grow without bound.
        """
        result = record.get("result")
        if result not in UPGRADE_RESULTS:
            log.warning("metrics: upgrade result %r is not one of %s; not counted",
                        result, ", ".join(UPGRADE_RESULTS))
            return
        self.upgrades.labels(result=result).inc()
        for key, histogram in (("total_s", self.upgrade_duration),
                               ("drain_s", self.drain_duration),
                               ("live_after_s", self.new_generation_live)):
            value = record.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                histogram.observe(float(value))
        forced = record.get("forced_closes") or 0
        if isinstance(forced, int) and forced > 0:
            self.forced_closes.inc(forced)
        gate = record.get("xds")
        if isinstance(gate, Mapping):
            self._gate_finished(gate)

    def _gate_finished(self, gate: Mapping[str, Any]) -> None:
        parity = gate.get("parity") or {}
        lost = len(parity.get("missing_listeners") or [])
        if gate.get("state") != "released":
            self.xds_gate.labels(outcome="held").inc()
        elif lost:
            self.xds_gate.labels(outcome="released_listener_change").inc()
            self.listeners_lost.inc(lost)
            log.warning("metrics: %d listener(s) lost in an accepted listener change", lost)
        else:
            self.xds_gate.labels(outcome="released").inc()

    def set_xds(self, status: Mapping[str, Any] | None) -> None:
        """The live generation's xDS status (`XdsGuard.status`; None: static or unknown)."""
        cp = (status or {}).get("control_plane") or {}
        connected = cp.get("connected")
        self.xds_connected.set(math.nan if connected is None else int(bool(connected)))
        last = cp.get("last_update_at")
        self.xds_last_update.set(last if isinstance(last, int | float) else math.nan)
        self.xds_rejected.set(int(cp.get("lds_rejected") or 0) + int(cp.get("cds_rejected") or 0))
        listeners = (status or {}).get("listeners")
        self.xds_listeners.set(len(listeners) if isinstance(listeners, Mapping) else math.nan)

    def envoy_restarted(self, reason: str) -> None:
        """Count one Envoy restart outside an upgrade: `crash` or `recovery`."""
        if reason not in RESTART_REASONS:
            log.warning("metrics: restart reason %r is not one of %s; not counted",
                        reason, ", ".join(RESTART_REASONS))
            return
        self.envoy_restarts.labels(reason=reason).inc()

    def set_live(self, epoch: int | None, version: str | None) -> None:
        """The live generation changed (None: nothing is live, or its version is unknown).

        `meshctl_envoy_info` keeps one series, the live version's: a series left behind for
        the previous version would make `count(meshctl_envoy_info)` lie after an upgrade.
        """
        self.epoch.set(math.nan if epoch is None else epoch)
        if version == self._version:
            return
        self.envoy_info.clear()
        if version is not None:
            self.envoy_info.labels(version=version).set(1)
        self._version = version

    def set_held(self, sockets: int, given: int) -> None:
        self.held_sockets.set(sockets)
        self.held_sockets_given.set(given)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def set_drain_connections(self, n: int | None) -> None:
        """Open connections of the draining generation; None (nothing drains, or unknown) is 0."""
        self.drain_connections.set(n or 0)

    def render(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format: (body, content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
