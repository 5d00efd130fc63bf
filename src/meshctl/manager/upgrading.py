"""An upgrade, step by step: UPGRADING, ROLLING_BACK, RECOVERING, DRAINING.

The phase steps of an upgrade and the helpers they share, from the request to the one
`_finish_upgrade` that records every end. Mixed into `Supervisor`, which owns the state they
read and write (declared below for the type checker) and runs them from its loop; the
mechanism they call is `Generations` (processes), `DrainWatch` (when to count), `repair`
(Trap 1) and `XdsGuard` (the xDS gate, Trap 4; docs/traps.md).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from meshctl import cpu, errors
from meshctl.clock import Clock, Deadline
from meshctl.drain.policy import DrainPolicy
from meshctl.drain.window import DrainWindow, Verdict
from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.manager import repair
from meshctl.manager.drainwatch import DrainWatch
from meshctl.manager.generation import Generation, Role
from meshctl.manager.generations import Generations
from meshctl.manager.holding import ListenerHolding
from meshctl.manager.initwatch import InitWatch, Restored
from meshctl.manager.metrics import Metrics
from meshctl.manager.phase import Phase, transition
from meshctl.manager.pod import GenState, PodLedger
from meshctl.manager.process import tail
from meshctl.manager.settings import InitPriority, SupervisorSettings
from meshctl.manager.snapshot import UpgradeRecord
from meshctl.manager.state import HISTORY_KEEP
from meshctl.manager.upgrade import Upgrade, init_scheduling
from meshctl.manager.xdsguard import GateCheck, GateState, XdsGuard

log = logging.getLogger("meshctl.manager.supervisor")


def last_log(gen: Generation) -> str:
    lines = tail(gen.log_path, lines=3)
    return " | ".join(lines) if lines else "(no log output)"


class UpgradeSteps:
    settings: SupervisorSettings
    clock: Clock
    phase: Phase
    live: Generation | None
    upgrade: Upgrade | None
    history: list[UpgradeRecord]
    gens: Generations
    guard: XdsGuard
    holding: ListenerHolding
    files: HotRestartFiles
    ledger: PodLedger | None
    metrics: Metrics
    drain_watch: DrainWatch
    ready_deadline: Deadline | None
    init_watch: InitWatch | None
    _upgrade_counter: int

    def _save(self) -> None:
        raise NotImplementedError  # the supervisor's

    def _crashed(self, message: str) -> None:
        raise NotImplementedError  # the supervisor's

    def _parent_for_restart(self, dead_epoch: int) -> None:
        raise NotImplementedError  # the supervisor's

    def _new_upgrade(self, old: Generation, to_epoch: int, binary: Path, config: Path,
                     policy: DrainPolicy, reason: str, ready_timeout_s: float) -> Upgrade:
        self._upgrade_counter += 1
        upgrade = Upgrade(
            id=f"u{self._upgrade_counter}", reason=reason, from_epoch=old.epoch,
            to_epoch=to_epoch,
            binary=binary, config=config, drain=policy, requested_wall=self.clock.wall(),
            requested_mono=self.clock.monotonic(), from_pid=old.pid,
            from_version=old.version, ready_timeout_s=ready_timeout_s,
        )
        self.upgrade = upgrade
        return upgrade

    def _begin_upgrade(self, binary: Path, config: Path, policy: DrainPolicy,
                       reason: str, ready_timeout_s: float, *,
                       listener_change_ok: bool = False) -> Upgrade:
        old = self.live
        assert old is not None
        upgrade = self._new_upgrade(old, self.gens.next_epoch, binary, config, policy, reason,
                                    ready_timeout_s)
        self.phase = transition(self.phase, Phase.UPGRADING)
        idle, upgrade.init_scheduling = init_scheduling(
            self.settings.init_priority, cpu.can_restore(),
            cpu.pressure() if self.settings.init_priority is InitPriority.AUTO else None)
        upgrade.gate, gate_yaml = self.guard.prepare(old, config, self.gens.next_epoch,
                                                     listener_change_ok=listener_change_ok)
        new = self.gens.spawn(binary, config, policy, idle=idle, config_yaml=gate_yaml)
        upgrade.to_pid = new.pid
        upgrade.event(self.clock.monotonic(), "new_started")
        self._end_init_watch()
        if idle:
            self.init_watch = InitWatch(new.process, new.epoch, self.clock).start()
        self.ready_deadline = Deadline(self.clock, ready_timeout_s)
        log.info("upgrade %s: epoch %d -> %d (%s)", upgrade.id, old.epoch, new.epoch, reason)
        self._save()
        return upgrade

    def _step_upgrading(self) -> None:
        upgrade = self.upgrade
        assert upgrade is not None
        new = self.gens.by_epoch[upgrade.to_epoch]
        if not new.alive:
            upgrade.error = (f"new generation {new.process.describe_exit()} before LIVE: "
                             f"{last_log(new)}")
            self._begin_rollback(new)
        elif self._gate_holds(upgrade.gate, new):
            if self.ready_deadline is not None and self.ready_deadline.expired():
                assert upgrade.gate is not None
                upgrade.error = (f"new generation held short of LIVE for "
                                 f"{upgrade.ready_timeout_s:g}s: {upgrade.gate.reason()}")
                self._begin_rollback(new)
        elif new.admin.is_ready():
            self._handover(new)
        elif self.ready_deadline is not None and self.ready_deadline.expired():
            upgrade.error = (f"new generation not LIVE within {upgrade.ready_timeout_s:g}s: "
                             f"{last_log(new)}")
            self._begin_rollback(new)

    def _gate_holds(self, check: GateCheck | None, new: Generation) -> bool:
        """Whether the xDS gate still holds `new` short of LIVE (after a look when due)."""
        if check is None or check.state is not GateState.HELD:
            return False
        held = self.guard.step(check, new) is GateState.HELD
        if not held and check.released_at is not None and self.upgrade is not None:
            self.upgrade.event(check.released_at, "gate_released")
        return held

    def _handover(self, new: Generation) -> None:
        """`new` is LIVE: it gets the traffic, the live one starts draining."""
        upgrade = self.upgrade
        assert upgrade is not None
        restored = self._end_init_watch()
        if restored is not None:
            upgrade.event(restored.at_mono, "new_restored")
        self._mark_live(new)
        now = self.clock.monotonic()
        if upgrade.recovery is None:
            upgrade.live_after_s = round(now - upgrade.requested_mono, 3)
            upgrade.to_version = new.version
            upgrade.event(now, "new_live")
        else:
            upgrade.recovery = "recovered"
            upgrade.event(now, "recovery_live")
        old = self.live
        assert old is not None
        if old.alive:
            old.role = Role.DRAINING
        self.live = new
        upgrade.window = DrainWindow(upgrade.drain, started_at=now)
        upgrade.event(now, "drain_start")
        self.phase = transition(self.phase, Phase.DRAINING)
        self._save()

    def _begin_rollback(self, failed: Generation) -> None:
        upgrade = self.upgrade
        assert upgrade is not None
        upgrade.event(self.clock.monotonic(), "rollback")
        self._end_init_watch()
        log.error("upgrade %s: rolling back: %s", upgrade.id, upgrade.error)
        self.phase = transition(self.phase, Phase.ROLLING_BACK)
        self.gens.end(failed, self.settings.drain.stop_grace_s)
        self._save()

    def _step_rolling_back(self) -> None:
        """The failed generation is being stopped; once it is gone, repair what it left."""
        upgrade = self.upgrade
        assert upgrade is not None
        failed = self.gens.by_epoch[upgrade.to_epoch]
        if failed.epoch in self.gens.stoppers:
            self.gens.stoppers[failed.epoch].tick()
        if failed.alive:
            return
        self.gens.stoppers.pop(failed.epoch, None)  # its epoch goes to the next generation
        self._keep_failed_log(failed, upgrade)
        # The next generation takes the failed one's epoch: Envoy finds its parent's socket
        # by epoch - 1, and the live one is failed.epoch - 1.
        self.gens.next_epoch = failed.epoch
        old = self.live
        if old is None or not old.alive:
            self._crashed("the old generation exited during the rollback")
            return
        reason = repair.needs_recovery(self.files, old)
        if reason is None:
            upgrade.recovery = "not_needed"
            self._finish_upgrade("rolled_back")
            return
        log.warning("upgrade %s: %s; recovering with a new generation on epoch %d's binary "
                    "and config", upgrade.id, reason, old.epoch)
        self.metrics.envoy_restarted("recovery")
        upgrade.recovery = "in_progress"
        upgrade.event(self.clock.monotonic(), "recovery_started")
        # Gated like any generation with a parent: on an xDS config, a recovery started while
        # the control plane is silent would otherwise go LIVE with no listener.
        failed_gate = upgrade.gate
        upgrade.gate, gate_yaml = self.guard.prepare(old, old.config, self.gens.next_epoch)
        if failed_gate is not None and upgrade.gate is not None:
            upgrade.gate.baseline = failed_gate.baseline  # read before the admin closed
        # The failed child may have made the old generation close its listeners already
        # (between its workers' start and LIVE): the held sockets, with the connections
        # queued in them, are then the only ones left. The recovery takes them through a
        # relay on the old generation's socket, and everything else from the old one.
        if len(self.holding):
            self.gens.bind_relay(old, self.holding.hold)
        self.gens.spawn(old.binary, old.config, upgrade.drain, config_yaml=gate_yaml)
        # A gated recovery waits for the same control plane as the failed generation: it gets
        # the upgrade's own ready timeout, so that a failed upgrade ends within twice that.
        self.ready_deadline = Deadline(self.clock, upgrade.ready_timeout_s
                                       if upgrade.gate is not None
                                       else self.settings.ready_timeout_s)
        self.phase = transition(self.phase, Phase.RECOVERING)
        self._save()

    def _step_recovering(self) -> None:
        upgrade = self.upgrade
        assert upgrade is not None
        recovery = self.gens.by_epoch[upgrade.to_epoch]
        if (recovery.alive and not self._gate_holds(upgrade.gate, recovery)
                and recovery.admin.is_ready()):
            self._handover(recovery)
            return
        if recovery.alive and not (self.ready_deadline and self.ready_deadline.expired()):
            return
        if recovery.alive:
            self.gens.end(recovery, self.settings.drain.stop_grace_s)
            self.gens.stoppers[recovery.epoch].tick()
            return
        upgrade.recovery = "failed"
        self.gens.stoppers.pop(recovery.epoch, None)
        self.gens.next_epoch = recovery.epoch
        why = (upgrade.gate.reason() if upgrade.gate is not None
               and upgrade.gate.state is GateState.HELD else last_log(recovery))
        upgrade.error = (f"{upgrade.error}; recovery failed too ({why}): "
                         f"epoch {upgrade.from_epoch} serves without its admin API until the "
                         f"next upgrade")
        if self.live is not None:
            with contextlib.suppress(errors.MeshctlError):
                repair.clear_flag(self.files.shared_memory, repair.hot_restart_version(self.live))
        self._finish_upgrade("rolled_back")

    def _keep_failed_log(self, failed: Generation, upgrade: Upgrade) -> None:
        """The failed generation's log outlives the reuse of its epoch number."""
        kept = failed.log_path.with_name(f"envoy-{failed.epoch}.{upgrade.id}-failed.log")
        with contextlib.suppress(OSError):
            failed.log_path.rename(kept)
            failed.log_path = kept

    def _step_draining(self) -> None:
        upgrade = self.upgrade
        assert upgrade is not None and upgrade.window is not None
        old = self.gens.by_epoch[upgrade.from_epoch]
        now = self.clock.monotonic()
        if self.live is not None and not self.live.alive:
            self._crashed(f"epoch {self.live.epoch} {self.live.process.describe_exit()} while "
                          f"the old generation was draining: {last_log(self.live)}")
            return
        if not old.alive:
            if upgrade.drain_end is None:
                upgrade.drain_end = "envoy" if old.process.exit_status == 0 else "exited"
            upgrade.drain_s = round(upgrade.window.elapsed(now), 3)
            upgrade.event(now, "old_exited")
            self._finish_upgrade("rolled_back" if upgrade.recovery else "succeeded")
            return
        if self.live is not None:
            # A take that failed at LIVE (its main thread busy) is retried now, not after the
            # drain: a listener the new config removed must not queue connections meanwhile.
            self.holding.tick(self.live, self.gens.alive())
        self._drain_old(upgrade, old, now)

    def _drain_old(self, upgrade: Upgrade, old: Generation, now: float) -> None:
        """The old generation of an upgrade or a pod handover drains: end it when its window
        says so (idle, or the deadline with the connections left counted as forced closes)."""
        assert upgrade.window is not None
        if old.epoch in self.gens.stoppers:
            self.gens.stoppers[old.epoch].tick()
            return
        verdict = self.drain_watch.look(upgrade.window, old, now)
        upgrade.connections = old.connections
        if verdict is None or verdict is Verdict.WAIT:
            return
        upgrade.drain_end = verdict.value
        if verdict is Verdict.DEADLINE:
            upgrade.forced_closes = old.connections or 0
        upgrade.event(now, f"drain_end_{verdict.value}")
        log.info("upgrade %s: drain window ends (%s) after %.1fs, %s connection(s) left",
                 upgrade.id, verdict.value, upgrade.window.elapsed(now), old.connections)
        self.gens.end(old, upgrade.drain.stop_grace_s)

    def _finish_upgrade(self, result: str, then: Phase | None = Phase.RUNNING) -> None:
        """The one end of every upgrade: its record into the history and the metrics, then
        the phase `then` (RUNNING; IDLE for a slot that handed over; None: the caller moves
        on, as a crash or a stop does)."""
        upgrade = self.upgrade
        assert upgrade is not None
        now = self.clock.monotonic()
        upgrade.result = result
        upgrade.total_s = round(now - upgrade.requested_mono, 3)
        upgrade.event(now, result)
        record = upgrade.to_json(now)
        self.history.append(record)
        self.history = self.history[-HISTORY_KEEP:]
        self.metrics.upgrade_finished(record)
        if result == "succeeded":
            log.info("upgrade %s succeeded in %.2fs: epoch %d live, version %s", upgrade.id,
                     upgrade.total_s, upgrade.to_epoch, upgrade.to_version)
        else:
            log.error("upgrade %s %s: %s (recovery: %s)", upgrade.id, result, upgrade.error,
                      upgrade.recovery)
        self.upgrade = None
        self.gens.drop_done_stoppers()
        if then is None:
            return
        if self.live is not None and self.live.xds_driven and self.live.alive:
            self.guard.observe(self.live, force=True)  # the status the waiting CLI reads
        if self.phase is not Phase.STOPPING:
            self.phase = transition(self.phase, then)
        self._save()

    def _end_init_watch(self) -> Restored | None:
        """Stops the watch of an idle init, if any: when it restored the generation."""
        watch, self.init_watch = self.init_watch, None
        if watch is None:
            return None
        watch.stop()
        return watch.restored

    def _mark_live(self, gen: Generation) -> None:
        self.gens.went_live(gen)
        self.holding.went_live(gen, self.gens.alive())
        if gen.xds_driven:  # what LDS, RDS, CDS and EDS gave it, and its listener ports
            self.guard.went_live(gen, self.upgrade.gate if self.upgrade is not None else None)
        self.metrics.set_live(gen.epoch, gen.version)
        if self.ledger is not None:
            self.ledger.record(gen.epoch, GenState.LIVE, pid=gen.pid, version=gen.version)
        log.info("epoch %d: LIVE (version %s, listener ports %s)", gen.epoch, gen.version,
                 sorted(gen.listener_ports))
