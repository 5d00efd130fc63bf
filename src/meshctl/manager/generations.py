"""The generations of one supervisor, as processes: spawn, reap, exit, stand-ins, ending.

Mechanism only: this module starts and ends Envoy generations and keeps the hot-restart chain
whole while it does (a stand-in answers on the socket of a parent that is gone while its child
lives: Trap 2, docs/traps.md). When to start or end one is the supervisor's policy
(`meshctl.manager.supervisor`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from meshctl import cpu, errors, trust
from meshctl.clock import Clock
from meshctl.drain.policy import DrainPolicy
from meshctl.envoy import xds
from meshctl.envoy.admin import AdminClient, AdminUnavailable
from meshctl.envoy.argv import LaunchSpec, build_argv, build_env
from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.envoy.sockethold import SocketHold
from meshctl.envoy.standin import ParentStandIn
from meshctl.manager import holding
from meshctl.manager.generation import Generation, Role
from meshctl.manager.pod import GenState, PodLedger
from meshctl.manager.process import ChildProcess, reap_children
from meshctl.manager.settings import SupervisorSettings
from meshctl.manager.state import StateDir
from meshctl.manager.stopper import Stopper, StopStep

log = logging.getLogger("meshctl.manager.supervisor")


class Generations:
    """Every Envoy generation this supervisor started or adopted, by epoch."""

    def __init__(self, settings: SupervisorSettings, state: StateDir, files: HotRestartFiles,
                 ledger: PodLedger | None, clock: Clock) -> None:
        self.settings = settings
        self.state = state
        self.files = files
        self.ledger = ledger
        self.clock = clock
        self.by_epoch: dict[int, Generation] = {}
        self.stand_ins: dict[int, ParentStandIn] = {}
        self.stoppers: dict[int, Stopper] = {}
        self.next_epoch = 0

    def alive(self) -> list[Generation]:
        return [g for g in self.by_epoch.values() if g.alive]

    def any_alive(self) -> bool:
        return any(g.alive for g in self.by_epoch.values())

    def tick_stoppers(self) -> None:
        for stopper in self.stoppers.values():
            stopper.tick()

    def drop_done_stoppers(self) -> None:
        self.stoppers = {e: s for e, s in self.stoppers.items() if s.step is not StopStep.DONE}

    def close_stand_ins(self) -> None:
        for stand_in in self.stand_ins.values():
            stand_in.close()
        self.stand_ins.clear()

    def spawn(self, binary: Path, config: Path, policy: DrainPolicy, *,
               no_parent_ok: bool = False, epoch: int | None = None,
               idle: bool = False, config_yaml: str | None = None) -> Generation:
        if epoch is None:
            epoch = self.next_epoch
        self.next_epoch = epoch + 1
        xds_driven = xds.is_xds_driven(config)
        parent_shutdown_s = policy.envoy_parent_shutdown_time_s
        holder = self.stand_ins.get(epoch - 1)
        if holder is not None and holder.hold is not None:
            # A restart after a crash, from the stand-in holding the sockets: its parent is
            # dead, nothing drains. Envoy keeps UDP listeners paused until it terminates its
            # parent (hot_restarting_child.cc: allDrainsImplicitlyComplete), so it should do
            # so at once; but not before it has asked for every held socket, which an
            # xDS-driven one does when LDS answers, within the pending window.
            parent_shutdown_s = int(self.settings.ready_timeout_s) + 5 if xds_driven else 1
        admin_file = self.state.admin_address_file(epoch)
        with contextlib.suppress(FileNotFoundError):
            admin_file.unlink()  # a stale address would make us poll someone else
        spec = LaunchSpec(
            binary=binary, config=config, base_id=self.settings.base_id, epoch=epoch,
            socket_prefix=self.state.socket_prefix, admin_address_path=admin_file,
            drain_time_s=policy.envoy_drain_time_s,
            parent_shutdown_time_s=parent_shutdown_s,
            drain_strategy=str(policy.strategy), concurrency=self.settings.concurrency,
            extra_args=self.settings.extra_args, no_parent_ok=no_parent_ok,
            config_yaml=config_yaml,
        )
        # Checked again at every start, not only when accepted: a crash restart runs the same
        # paths, and nobody but us or root may have been able to change them since.
        for path, what in ((binary, "Envoy binary"), (config, "Envoy config")):
            reason = trust.untrusted_reason(path)
            if reason is not None:
                raise errors.StartFailed(f"refusing to start {what} {path}: {reason}")
        log_path = self.state.log_file(epoch)
        with contextlib.suppress(FileNotFoundError):
            log_path.unlink()
        self.prune_logs(keep_from=epoch - 5)
        # In a pod, the other slot's supervisor may pose as its live generation's child to take
        # its sockets (`meshctl.manager.holding`): not while this one is started and recorded.
        with holding.pod_lock(holding.lock_path(self.files) if self.ledger is not None
                              else None):
            try:
                process = ChildProcess.spawn(build_argv(spec), build_env(spec, os.environ),
                                             log_path, keeper=self.settings.keeper, idle=idle)
            except OSError as exc:
                raise errors.StartFailed(f"cannot start {binary}: {exc.strerror}") from exc
            gen = Generation(
                epoch=epoch, binary=binary, config=config, process=process,
                admin=AdminClient(admin_file, timeout_s=1.0), log_path=log_path,
                started_mono=self.clock.monotonic(), started_wall=self.clock.wall(),
                xds_driven=xds_driven,
            )
            self.by_epoch[epoch] = gen
            if self.ledger is not None:
                self.ledger.record(epoch, GenState.STARTING, pid=gen.pid, binary=str(binary))
        log.info("epoch %d: started pid %d (%s, %s)", epoch, gen.pid, binary, config)
        return gen

    def prune_logs(self, keep_from: int) -> None:
        for path in self.state.logs.glob("envoy-*.log"):
            with contextlib.suppress(ValueError, OSError):
                if int(path.stem.split("-")[1].split(".")[0]) < keep_from:
                    path.unlink()

    def reap(self) -> None:
        by_pid = {g.process.pid: g for g in self.by_epoch.values() if g.alive}
        for pid, status in reap_children():
            gen = by_pid.get(pid)
            if gen is None:
                log.debug("reaped unknown child %d", pid)  # an orphan handed to PID 1
                continue
            gen.process.exit_status = status
            self.exited(gen)
        for gen in by_pid.values():
            if gen.process.poll_adopted():
                self.exited(gen)

    def exited(self, gen: Generation) -> None:
        gen.role = Role.EXITED
        log.info("epoch %d: pid %d %s", gen.epoch, gen.pid, gen.process.describe_exit())
        if gen.epoch in self.stoppers:  # its stop's last named step, before any record closes
            self.stoppers[gen.epoch].tick()
        if self.ledger is not None:
            self.ledger.record(gen.epoch, GenState.EXITED if gen.live_mono is not None
                               else GenState.FAILED, exit=gen.process.describe_exit())
        relay = self.stand_ins.get(gen.epoch)
        if relay is not None:
            relay.parent_gone()  # it relayed to this generation, and answers itself now
        # A generation gone while its child lives: answer on its socket from now on, or the
        # child blocks on its next stats request and aborts at its parent-shutdown timer.
        if self.child_alive(gen) and gen.epoch not in self.stand_ins:
            self.bind_stand_in(gen)
        # Its child (epoch+1) may still talk to its parent socket through a stand-in: keep it.
        self.files.remove_generation(gen.epoch, keep_parent=gen.epoch in self.stand_ins)
        with contextlib.suppress(FileNotFoundError):
            gen.admin.address_file.unlink()
        # It was the only sender to its parent's stand-in: that stand-in is done.
        stand_in = self.stand_ins.pop(gen.epoch - 1, None)
        if stand_in is not None:
            stand_in.close()

    def child_alive(self, gen: Generation) -> bool:
        """Is generation epoch+1 running: here, or (in a pod) in the other slot?"""
        child = self.by_epoch.get(gen.epoch + 1)
        if child is not None:
            return child.alive
        if self.ledger is not None:
            return self.ledger.state_of(gen.epoch + 1) in (GenState.STARTING, GenState.LIVE)
        return False

    def bind_stand_in(self, gen: Generation) -> bool:
        return self.bind_stand_in_for(gen.epoch)

    def bind_stand_in_for(self, epoch: int, hold: SocketHold | None = None,
                          start_time_s: int = 0) -> bool:
        """With `hold`: the stand-in a generation restarted after a crash hot-restarts from,
        which hands it the held listening sockets (`meshctl.manager.holding`)."""
        stale = self.stand_ins.pop(epoch, None)
        if stale is not None:
            stale.close()
        stand_in = ParentStandIn(self.files.parent_socket(epoch), epoch, hold, start_time_s)
        try:
            stand_in.start()
        except OSError as exc:
            log.error("epoch %d: stand-in could not bind (%s)", epoch, exc)
            return False
        self.stand_ins[epoch] = stand_in
        return True

    def bind_relay(self, parent: Generation, hold: SocketHold) -> bool:
        """Before a recovery generation hot-restarts from `parent`: a relay on its socket that
        gives the held sockets and forwards the rest (`ParentStandIn`, relay mode). False
        when the parent's socket cannot be linked: the recovery then talks to it directly."""
        path = self.files.parent_socket(parent.epoch)
        link = path.with_name(path.name + ".r")
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        try:
            os.link(path, link)  # a second name for the parent's own socket
        except OSError as exc:
            log.warning("epoch %d: no relay for the recovery (%s)", parent.epoch, exc)
            return False
        stale = self.stand_ins.pop(parent.epoch, None)
        if stale is not None:
            stale.close()
        relay = ParentStandIn(path, parent.epoch, hold, relay_to=link)
        try:
            relay.start()
        except OSError as exc:
            log.error("epoch %d: relay could not bind (%s)", parent.epoch, exc)
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            return False
        self.stand_ins[parent.epoch] = relay
        return True

    def end(self, gen: Generation, grace_s: float) -> None:
        """Start ending a generation (named steps). If its child is alive, a stand-in answers
        on its socket first, so the child does not abort (Trap 2, docs/traps.md)."""
        stopping = self.stoppers.get(gen.epoch)
        # An epoch number is reused after a rollback: only this process's own stopper counts.
        if (stopping is not None and stopping.process is gen.process) or not gen.alive:
            return
        if (self.child_alive(gen) and gen.epoch not in self.stand_ins
                and not self.bind_stand_in(gen)):
            log.error("epoch %d: waiting for Envoy's own timer instead of ending it", gen.epoch)
            return
        # Its parent may be here or (in a pod) in the other slot: never SIGTERM a generation
        # that was not LIVE while something could be its parent.
        never_live = gen.live_mono is None and gen.epoch > 0
        gen.role = Role.STOPPING
        # Its exit (destructors, freeing its heap, closing sockets) is a burst of CPU that must
        # not come out of the serving generation's latency: it runs only on CPU left unused.
        log.info("epoch %d: %d thread(s) to idle priority for the exit", gen.epoch,
                 gen.process.yield_cpu())
        stopper = Stopper(gen.process, grace_s, self.clock, f"epoch {gen.epoch}")
        self.stoppers[gen.epoch] = stopper
        stopper.start(ask=not never_live)

    def went_live(self, gen: Generation) -> None:
        """`gen` answered LIVE: it serves now. What it says about itself is read once here."""
        # First, before anything else it costs: a generation that initialized under SCHED_IDLE
        # now serves, and must compete for the CPU like its predecessor did. The init watch
        # restored it when its workers started; checked here on every thread of the process,
        # not remembered, for what the watch missed and for a generation adopted mid-upgrade.
        if cpu.idle_threads(gen.process.envoy_pid):
            moved, refused = gen.process.restore_cpu()
            if refused:
                log.error("epoch %d: %d thread(s) could not leave idle priority (%d did)",
                          gen.epoch, refused, moved)
            else:
                log.info("epoch %d: initialized at idle priority; %d thread(s) back to normal",
                         gen.epoch, moved)
        gen.live_mono = self.clock.monotonic()
        gen.live_wall = self.clock.wall()
        gen.role = Role.LIVE
        try:
            info = gen.admin.server_info()
            gen.set_version(info.version)
            gen.hot_restart_version = info.hot_restart_version or None
            gen.listener_ports = gen.admin.listener_ports()
        except (AdminUnavailable, ValueError) as exc:
            log.warning("epoch %d: LIVE but admin info unavailable: %s", gen.epoch, exc)
