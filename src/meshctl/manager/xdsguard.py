"""The supervisor's guard for an xDS-driven Envoy: no handover to a generation without its config.

Policy over two mechanisms of `meshctl.envoy`: the gate (`gate.py`, which holds a new
generation short of LIVE) and the view (`xds.py`, what a generation got from its control
plane). For every generation started from a parent on an xDS-driven bootstrap:
  1. before it starts, the parent's view is read (the parent's admin API closes when the child
     starts) and its gate name is held;
  2. once its initialization reaches the gate, its view is read every `CHECK_S` and compared
     with the parent's (`xds.parity`);
  3. the gate is released only when nothing is missing; otherwise the generation stays short
     of LIVE, the parent keeps serving, and the supervisor's ready deadline rolls it back
     with the last comparison as the reason.
A static config is never gated: its listeners come from the file, and the file was validated.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from meshctl.clock import Clock
from meshctl.envoy import gate as gate_mod
from meshctl.envoy import xds
from meshctl.envoy.admin import AdminUnavailable
from meshctl.manager.generation import Generation

log = logging.getLogger(__name__)

CHECK_S = 0.1
"""How often a held generation's view is read: five admin requests to a process that serves no
traffic yet, and every check costs at most this much time on the way to LIVE."""
OBSERVE_S = 5.0
"""How often the live generation's listeners and control-plane stats are read (status, metrics,
and the listener ports the drain counts connections on: LDS may add one at run time)."""


class GateState(enum.Enum):
    NOT_GATED = "not_gated"
    """Static config, or no parent: LIVE is Envoy's own business."""
    HELD = "held"
    """Not released: the generation cannot be LIVE."""
    RELEASED = "released"


@dataclass
class GateCheck:
    """One gated generation: what it is compared with, and the last comparison."""

    epoch: int
    name: str
    baseline: xds.XdsView | None
    config_changed: bool
    listener_change_ok: bool
    state: GateState = GateState.HELD
    parity: xds.Parity | None = None
    view: xds.XdsView | None = None
    checked_at: float = 0.0
    released_at: float | None = None
    checks: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "checks": self.checks,
            "parity": self.parity.to_json() if self.parity is not None else None,
            "old": self.baseline.summary() if self.baseline is not None else None,
            "new": self.view.summary() if self.view is not None else None,
        }

    def reason(self) -> str:
        if self.parity is not None:
            return f"its xDS config is incomplete: {self.parity.reason()}"
        return "its initialization never reached meshctl's gate (clusters or listeners " \
               "from the control plane still pending)"


class XdsGuard:
    def __init__(self, socket_path: Path, clock: Clock) -> None:
        self.socket_path = socket_path
        self.clock = clock
        self.server: gate_mod.GateServer | None = None
        self.live_view: xds.XdsView | None = None
        """The live generation's last view (listeners, health; endpoints at upgrades)."""
        self.observed_at = 0.0

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def serve_released(self) -> None:
        """Answer the gates of generations adopted from a previous supervisor (their gRPC
        stream reconnects to the same socket)."""
        self._server()

    def _server(self) -> gate_mod.GateServer:
        if self.server is None:
            self.server = gate_mod.GateServer(self.socket_path).start()
        return self.server

    # -- before the start

    def prepare(self, parent: Generation | None, config: Path, epoch: int, *,
                listener_change_ok: bool = False) -> tuple[GateCheck | None, str | None]:
        """Hold the gate of generation `epoch` if it needs one: (its check, the --config-yaml
        to start it with); (None, None) when it is not gated."""
        if parent is None or not xds.is_xds_driven(config):
            return None, None
        try:
            baseline: xds.XdsView | None = xds.read_view(parent.admin)
            self.live_view = baseline
        except (AdminUnavailable, ValueError) as exc:
            # The parent's admin can be gone (a failed upgrade before took it): the last view
            # read while it was there is the best baseline left.
            baseline = self.live_view
            log.warning("epoch %d: cannot read its xDS view (%s); comparing with the view of "
                        "%s", parent.epoch, exc,
                        "earlier" if baseline is not None else "nothing")
        check = GateCheck(epoch=epoch, name=gate_mod.route_name(epoch), baseline=baseline,
                          config_changed=config != parent.config,
                          listener_change_ok=listener_change_ok)
        self._server().hold(check.name)
        return check, gate_mod.config_yaml(self.socket_path, epoch)

    # -- while it initializes

    def step(self, check: GateCheck, gen: Generation) -> GateState:
        """Compare `gen` with its parent when due; release the gate when nothing is missing."""
        if check.state is not GateState.HELD:
            return check.state
        now = self.clock.monotonic()
        if now - check.checked_at < CHECK_S:
            return check.state
        check.checked_at = now
        server = self._server()
        if not server.asked(check.name):
            return check.state  # still fetching clusters (CDS/EDS) or has not started yet
        try:
            view = xds.read_view(gen.admin)
        except (AdminUnavailable, ValueError) as exc:
            log.debug("epoch %d: view unavailable: %s", gen.epoch, exc)
            return check.state
        check.checks += 1
        check.view = view
        check.parity = xds.parity(check.baseline or xds.XdsView(), view,
                                  config_changed=check.config_changed,
                                  listener_change_ok=check.listener_change_ok)
        if not check.parity.complete:
            if check.checks == 1 or check.checks % 50 == 0:
                log.warning("epoch %d: held short of LIVE: %s", gen.epoch,
                            check.parity.reason())
            return check.state
        if check.parity.missing_listeners or check.parity.moved_listeners:
            log.warning("epoch %d: released with a listener change (%s)", gen.epoch,
                        check.parity.reason())
        check.state = GateState.RELEASED
        check.released_at = now
        server.release(check.name)
        log.info("epoch %d: xDS gate released after %d check(s): %d listener(s), %d route "
                 "config(s), %d cluster(s), %d endpoint(s)", gen.epoch, check.checks,
                 len(view.listeners), len(view.routes), view.clusters, view.endpoints)
        return check.state

    # -- while it serves

    def went_live(self, gen: Generation, check: GateCheck | None) -> None:
        """`gen` is LIVE: its full view is the gate's last reading, or (a first start, a crash
        restart) one read now; then its listener ports and health."""
        if check is not None and check.view is not None:
            self.live_view = check.view
        else:
            try:
                self.live_view = xds.read_view(gen.admin)
            except (AdminUnavailable, ValueError) as exc:
                log.warning("epoch %d: LIVE but its xDS view is unavailable: %s", gen.epoch, exc)
        self.observe(gen, force=True)

    def observe(self, live: Generation, *, force: bool = False) -> None:
        """Refresh the live generation's listeners and control-plane health (cheap reads)."""
        now = self.clock.monotonic()
        if not force and now - self.observed_at < OBSERVE_S:
            return
        self.observed_at = now
        try:
            listeners = xds.listeners_from(live.admin.get_json("/listeners?format=json"))
            health = xds.read_health(live.admin)
            ports = live.admin.listener_ports()
        except (AdminUnavailable, ValueError):
            # No admin API (a failed upgrade closed it, Trap 1): what we knew of the control
            # plane is no longer known; the listeners were not seen to change.
            if self.live_view is not None and self.live_view.control_plane is not None:
                self.live_view = replace(self.live_view, control_plane=None)
            return
        live.listener_ports = ports
        previous = self.live_view or xds.XdsView()
        self.live_view = xds.XdsView(
            listeners=listeners, routes=previous.routes, rds_wanted=previous.rds_wanted,
            clusters=previous.clusters,
            clusters_with_endpoints=previous.clusters_with_endpoints,
            endpoints=previous.endpoints, control_plane=health)

    def status(self) -> dict[str, Any] | None:
        view = self.live_view
        if view is None:
            return None
        health = view.control_plane
        return {**view.summary(),
                "control_plane": health.to_json() if health is not None else None}
