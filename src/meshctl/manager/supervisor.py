"""The supervisor: one main loop that owns every Envoy generation (policy; mechanism elsewhere).

The loop, every tick or when woken (signal, control request):
  1. act on recorded signals (handlers only record them),
  2. act on queued control requests,
  3. reap every exited child,
  4. advance the phase (`Phase`) by looking at the generations,
  5. publish a status snapshot for the control socket.

An upgrade, as the phases see it:
  RUNNING    epoch N live alone
  UPGRADING  epoch N+1 spawned with the same base id; it takes N's listen sockets and N closes
             its admin listener. If N+1 exits or misses the ready deadline: rolled back.
  DRAINING   N+1 is LIVE, N drains. The drain window (`meshctl.drain`) ends it when idle or at
             the deadline; before signalling N, a stand-in takes N's hot-restart socket so that
             N+1 does not abort (see `meshctl.envoy.standin`).
  RUNNING    N has exited; N+1 is live alone; the upgrade is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from meshctl import errors
from meshctl.clock import Clock, Deadline, SystemClock
from meshctl.drain.connections import count_downstream
from meshctl.drain.policy import DrainPolicy
from meshctl.drain.window import DrainWindow, Verdict
from meshctl.envoy.admin import AdminClient, AdminUnavailable
from meshctl.envoy.argv import LaunchSpec, build_argv, build_env
from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.envoy.standin import ParentStandIn
from meshctl.exitcodes import ExitCode
from meshctl.manager.control import Command, ControlServer
from meshctl.manager.generation import Generation, Role
from meshctl.manager.phase import Phase, transition
from meshctl.manager.process import ChildProcess, reap_children, tail
from meshctl.manager.settings import SupervisorSettings
from meshctl.manager.state import HISTORY_KEEP, StateDir
from meshctl.manager.stopper import Stopper, StopStep

log = logging.getLogger(__name__)

_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
_POLICY_KEYS = ("drain_min_s", "drain_max_s", "strategy", "stop_grace_s")
_CONNECTION_SAMPLE_S = 1.0  # how often the live generation's connections are read for status


@dataclass
class Upgrade:
    """One upgrade, from request to result. Serialised into status and the state history."""

    id: str
    reason: str
    from_epoch: int
    to_epoch: int
    binary: Path
    config: Path
    drain: DrainPolicy
    requested_wall: float
    requested_mono: float
    from_pid: int
    from_version: str | None
    to_pid: int | None = None
    to_version: str | None = None
    result: str = "in_progress"
    """in_progress, succeeded, rolled_back or aborted."""
    error: str | None = None
    drain_end: str | None = None
    """idle (ended early), deadline (forced), envoy (Envoy's own timer) or exited (crashed)."""
    forced_closes: int = 0
    live_after_s: float | None = None
    drain_s: float | None = None
    total_s: float | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    window: DrainWindow | None = None
    connections: int | None = None

    def event(self, now: float, name: str) -> None:
        self.events.append((round(now - self.requested_mono, 3), name))

    def to_json(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "reason": self.reason, "result": self.result, "error": self.error,
            "from_epoch": self.from_epoch, "to_epoch": self.to_epoch,
            "from_pid": self.from_pid, "to_pid": self.to_pid,
            "from_version": self.from_version, "to_version": self.to_version,
            "binary": str(self.binary), "config": str(self.config),
            "requested_at": self.requested_wall,
            "live_after_s": self.live_after_s, "drain_s": self.drain_s,
            "total_s": self.total_s, "drain_end": self.drain_end,
            "forced_closes": self.forced_closes,
            "drain_policy": {
                "drain_min_s": self.drain.drain_min_s, "drain_max_s": self.drain.drain_max_s,
                "strategy": str(self.drain.strategy),
            },
            "events": [{"t_s": t, "event": name} for t, name in self.events],
        }
        if self.window is not None and self.result == "in_progress":
            out["drain"] = {
                "connections": self.connections,
                "elapsed_s": round(self.window.elapsed(now), 3),
                "time_left_s": round(self.window.time_left(now), 3),
            }
        return out


class Supervisor:
    def __init__(self, settings: SupervisorSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.state = StateDir(settings.state_dir)
        self.files = HotRestartFiles(self.state.socket_prefix, settings.base_id)
        self.phase = Phase.STARTING
        self.exit_code = ExitCode.OK
        self.failure: str | None = None
        self.generations: dict[int, Generation] = {}
        self.live: Generation | None = None
        self.upgrade: Upgrade | None = None
        self.history: list[dict[str, Any]] = []
        self.next_epoch = 0
        self.stand_ins: dict[int, ParentStandIn] = {}
        self.stoppers: dict[int, Stopper] = {}
        self.shutdown_window: DrainWindow | None = None
        self.graceful_stop = True
        self.ready_deadline: Deadline | None = None
        self._signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._snapshot: dict[str, Any] = {}
        self._last_sample = 0.0
        self._upgrade_counter = 0
        self.control = ControlServer(self.state.control_socket, lambda: self._snapshot,
                                     self._wake)

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> ExitCode:
        """Run until stopped; returns the exit code. Raises MeshctlError before anything starts
        if the state dir cannot be used."""
        self.state.prepare()
        self.state.acquire()
        old_handlers: dict[int, Any] = {}
        old_wakeup = -1
        try:
            self._load_previous()
            self.files.remove_all()  # stale files of a previous, dead supervisor
            for sig in _HANDLED_SIGNALS:
                old_handlers[sig] = signal.signal(sig, self._record_signal)
            old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            self.control.start()
            self._start_first_generation()
            while self.phase is not Phase.STOPPED:
                self._wait(self.settings.tick_s)
                self._handle_signals()
                self._handle_commands()
                self._reap()
                self._step()
                self._publish()
        finally:
            self._final_cleanup()
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            self.state.release()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return self.exit_code

    def _load_previous(self) -> None:
        previous = self.state.load()
        if previous is None:
            return
        self.history = list(previous.get("history", []))[-HISTORY_KEEP:]
        self._upgrade_counter = int(previous.get("upgrade_counter", 0))
        live = previous.get("live") or {}
        pid, created = live.get("pid"), live.get("create_time")
        if isinstance(pid, int) and _same_process(pid, created):
            raise errors.Busy(
                f"Envoy pid {pid} (epoch {live.get('epoch')}) from a previous supervisor is "
                f"still running on {self.state.root}; stop it first"
            )

    def _start_first_generation(self) -> None:
        s = self.settings
        self.live = self._spawn(s.binary, s.config, s.drain)
        self.ready_deadline = Deadline(self.clock, s.ready_timeout_s)
        self._save()

    def _final_cleanup(self) -> None:
        """Whatever happened, leave no process and no file of ours behind."""
        for gen in self.generations.values():
            if gen.alive:
                gen.process.send(signal.SIGKILL)
        deadline = Deadline(self.clock, 5.0)
        while any(g.alive for g in self.generations.values()) and not deadline.expired():
            self._reap()
            if any(g.alive for g in self.generations.values()):
                self._wait(0.05)
        for stand_in in self.stand_ins.values():
            stand_in.close()
        self.stand_ins.clear()
        self.control.close()
        if not any(g.alive for g in self.generations.values()):
            self.files.remove_all()
            for gen in self.generations.values():
                with contextlib.suppress(FileNotFoundError):
                    gen.admin.address_file.unlink()
        self.live = None
        with contextlib.suppress(errors.StateDirError):
            self._save()

    # ----------------------------------------------------------------- events

    def _record_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.append(signum)  # only record: the loop acts

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"c")

    def _wait(self, timeout_s: float) -> None:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._wake_r], [], [], timeout_s)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.handle_term(signum)
            elif signum == signal.SIGHUP:
                self.handle_hup()
            elif signum == signal.SIGUSR1:
                self.handle_usr1()
            # SIGCHLD only wakes the loop; reaping happens every tick anyway.

    def handle_term(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.phase is Phase.STOPPING:
            log.warning("%s again while stopping: ending every generation now", name)
            self._begin_stop(graceful=False)
        else:
            log.info("%s: stopping gracefully (drain, then stop)", name)
            self._begin_stop(graceful=True)

    def handle_hup(self) -> None:
        """Hot restart onto the same binary and config, like Envoy's own hot-restarter."""
        if self.phase is not Phase.RUNNING or self.live is None:
            log.warning("SIGHUP ignored: %s", self._busy_reason())
            return
        self._begin_upgrade(self.live.binary, self.live.config, self.settings.drain, "SIGHUP")

    def handle_usr1(self) -> None:
        """SIGUSR1 asks Envoy to reopen its access logs (log rotation): every generation."""
        for gen in self.generations.values():
            if gen.alive:
                gen.process.send(signal.SIGUSR1)

    def _handle_commands(self) -> None:
        while not self.control.commands.empty():
            cmd = self.control.commands.get_nowait()
            try:
                self._command(cmd)
            except errors.MeshctlError as exc:
                cmd.refuse(exc)

    def _command(self, cmd: Command) -> None:
        if cmd.op == "upgrade":
            if self.phase is not Phase.RUNNING or self.live is None:
                raise errors.Busy(f"upgrade refused: {self._busy_reason()}")
            binary = _existing_file(cmd.args.get("binary"), self.live.binary, "Envoy binary")
            config = _existing_file(cmd.args.get("config"), self.live.config, "config file")
            policy = self._policy_from(cmd.args)
            upgrade = self._begin_upgrade(binary, config, policy, "request")
            cmd.answer(upgrade=upgrade.to_json(self.clock.monotonic()))
        elif cmd.op == "stop":
            graceful = bool(cmd.args.get("graceful", True))
            self._begin_stop(graceful=graceful)
            cmd.answer(phase=str(self.phase))
        else:
            raise errors.BadInput(f"unknown control operation {cmd.op!r}")

    def _policy_from(self, args: dict[str, Any]) -> DrainPolicy:
        wanted = {k: args[k] for k in _POLICY_KEYS if args.get(k) is not None}
        try:
            return self.settings.drain.with_overrides(wanted)
        except ValueError as exc:
            raise errors.BadInput(f"bad drain policy: {exc}") from exc

    def _busy_reason(self) -> str:
        if self.phase in (Phase.UPGRADING, Phase.DRAINING) and self.upgrade is not None:
            return (f"upgrade {self.upgrade.id} (epoch {self.upgrade.from_epoch} -> "
                    f"{self.upgrade.to_epoch}) is in progress ({self.phase})")
        return f"the supervisor is {self.phase}"

    # ----------------------------------------------------------------- processes

    def _spawn(self, binary: Path, config: Path, policy: DrainPolicy) -> Generation:
        epoch = self.next_epoch
        self.next_epoch += 1
        admin_file = self.state.admin_address_file(epoch)
        with contextlib.suppress(FileNotFoundError):
            admin_file.unlink()  # a stale address would make us poll someone else
        spec = LaunchSpec(
            binary=binary, config=config, base_id=self.settings.base_id, epoch=epoch,
            socket_prefix=self.state.socket_prefix, admin_address_path=admin_file,
            drain_time_s=policy.envoy_drain_time_s,
            parent_shutdown_time_s=policy.envoy_parent_shutdown_time_s,
            drain_strategy=str(policy.strategy), concurrency=self.settings.concurrency,
            extra_args=self.settings.extra_args,
        )
        log_path = self.state.log_file(epoch)
        with contextlib.suppress(FileNotFoundError):
            log_path.unlink()
        self._prune_logs(keep_from=epoch - 5)
        try:
            process = ChildProcess.spawn(build_argv(spec), build_env(spec, os.environ), log_path)
        except OSError as exc:
            raise errors.StartFailed(f"cannot start {binary}: {exc.strerror}") from exc
        gen = Generation(
            epoch=epoch, binary=binary, config=config, process=process,
            admin=AdminClient(admin_file, timeout_s=1.0), log_path=log_path,
            started_mono=self.clock.monotonic(), started_wall=self.clock.wall(),
        )
        self.generations[epoch] = gen
        log.info("epoch %d: started pid %d (%s, %s)", epoch, process.pid, binary, config)
        return gen

    def _prune_logs(self, keep_from: int) -> None:
        for path in self.state.logs.glob("envoy-*.log"):
            with contextlib.suppress(ValueError, OSError):
                if int(path.stem.split("-", 1)[1]) < keep_from:
                    path.unlink()

    def _reap(self) -> None:
        by_pid = {g.pid: g for g in self.generations.values() if g.alive}
        for pid, status in reap_children():
            gen = by_pid.get(pid)
            if gen is None:
                log.debug("reaped unknown child %d", pid)  # an orphan handed to PID 1
                continue
            gen.process.exit_status = status
            gen.role = Role.EXITED
            log.info("epoch %d: pid %d %s", gen.epoch, pid, gen.process.describe_exit())
            self._after_exit(gen)

    def _after_exit(self, gen: Generation) -> None:
        # Its child (epoch+1) may still talk to its parent socket through a stand-in: keep it.
        self.files.remove_generation(gen.epoch, keep_parent=gen.epoch in self.stand_ins)
        with contextlib.suppress(FileNotFoundError):
            gen.admin.address_file.unlink()
        # It was the only sender to its parent's stand-in: that stand-in is done.
        stand_in = self.stand_ins.pop(gen.epoch - 1, None)
        if stand_in is not None:
            stand_in.close()

    def _end(self, gen: Generation, grace_s: float) -> None:
        """Start ending a generation (named steps). If its child is alive, a stand-in answers
        on its socket first, so the child does not abort (Trap 2)."""
        if gen.epoch in self.stoppers or not gen.alive:
            return
        child = self.generations.get(gen.epoch + 1)
        if child is not None and child.alive and gen.epoch not in self.stand_ins:
            stand_in = ParentStandIn(self.files.parent_socket(gen.epoch), gen.epoch)
            try:
                stand_in.start()
                self.stand_ins[gen.epoch] = stand_in
            except OSError as exc:
                log.error("epoch %d: stand-in could not bind (%s); waiting for Envoy's own "
                          "timer instead of ending it", gen.epoch, exc)
                return
        gen.role = Role.STOPPING
        stopper = Stopper(gen.process, grace_s, self.clock, f"epoch {gen.epoch}")
        self.stoppers[gen.epoch] = stopper
        stopper.start()

    # ----------------------------------------------------------------- upgrade

    def _begin_upgrade(self, binary: Path, config: Path, policy: DrainPolicy,
                       reason: str) -> Upgrade:
        old = self.live
        assert old is not None
        self._upgrade_counter += 1
        now = self.clock.monotonic()
        upgrade = Upgrade(
            id=f"u{self._upgrade_counter}", reason=reason, from_epoch=old.epoch,
            to_epoch=self.next_epoch, binary=binary, config=config, drain=policy,
            requested_wall=self.clock.wall(), requested_mono=now, from_pid=old.pid,
            from_version=old.version,
        )
        self.upgrade = upgrade
        self.phase = transition(self.phase, Phase.UPGRADING)
        new = self._spawn(binary, config, policy)
        upgrade.to_pid = new.pid
        upgrade.event(self.clock.monotonic(), "new_started")
        self.ready_deadline = Deadline(self.clock, self.settings.ready_timeout_s)
        log.info("upgrade %s: epoch %d -> %d (%s)", upgrade.id, old.epoch, new.epoch, reason)
        self._save()
        return upgrade

    def _step_upgrading(self) -> None:
        upgrade, new = self.upgrade, self.generations.get(self.next_epoch - 1)
        assert upgrade is not None and new is not None
        if new.epoch in self.stoppers:  # rolling back: wait until the failed one is gone
            self.stoppers[new.epoch].tick()
            if not new.alive:
                self._finish_upgrade("rolled_back")
            return
        if not new.alive:
            upgrade.error = (f"new generation {new.process.describe_exit()} before LIVE: "
                             f"{_last_log(new)}")
            self._finish_upgrade("rolled_back")
        elif new.admin.is_ready():
            self._mark_live(new)
            now = self.clock.monotonic()
            upgrade.live_after_s = round(now - upgrade.requested_mono, 3)
            upgrade.to_version = new.version
            upgrade.event(now, "new_live")
            old = self.live
            assert old is not None
            old.role = Role.DRAINING
            self.live = new
            upgrade.window = DrainWindow(upgrade.drain, started_at=now)
            upgrade.event(now, "drain_start")
            self.phase = transition(self.phase, Phase.DRAINING)
            self._save()
        elif self.ready_deadline is not None and self.ready_deadline.expired():
            upgrade.error = (f"new generation not LIVE within {self.settings.ready_timeout_s:g}s: "
                             f"{_last_log(new)}")
            self._end(new, self.settings.drain.stop_grace_s)

    def _step_draining(self) -> None:
        upgrade = self.upgrade
        assert upgrade is not None and upgrade.window is not None
        old = self.generations[upgrade.from_epoch]
        now = self.clock.monotonic()
        if self.live is not None and not self.live.alive:
            self._fail(f"epoch {self.live.epoch} {self.live.process.describe_exit()} while the "
                       f"old generation was draining: {_last_log(self.live)}")
            return
        if not old.alive:
            if upgrade.drain_end is None:
                upgrade.drain_end = "envoy" if old.process.exit_status == 0 else "exited"
            upgrade.drain_s = round(upgrade.window.elapsed(now), 3)
            upgrade.event(now, "old_exited")
            self._finish_upgrade("succeeded")
            return
        if old.epoch in self.stoppers:
            self.stoppers[old.epoch].tick()
            return
        upgrade.connections = old.connections = count_downstream(old.pid, old.listener_ports)
        verdict = upgrade.window.decide(now, old.connections)
        if verdict is Verdict.WAIT:
            return
        upgrade.drain_end = verdict.value
        if verdict is Verdict.DEADLINE:
            upgrade.forced_closes = old.connections or 0
        upgrade.event(now, f"drain_end_{verdict.value}")
        log.info("upgrade %s: drain window ends (%s) after %.1fs, %s connection(s) left",
                 upgrade.id, verdict.value, upgrade.window.elapsed(now), old.connections)
        self._end(old, upgrade.drain.stop_grace_s)

    def _finish_upgrade(self, result: str) -> None:
        upgrade = self.upgrade
        assert upgrade is not None
        now = self.clock.monotonic()
        upgrade.result = result
        upgrade.total_s = round(now - upgrade.requested_mono, 3)
        upgrade.event(now, result)
        self.history.append(upgrade.to_json(now))
        self.history = self.history[-HISTORY_KEEP:]
        if result == "rolled_back":
            log.error("upgrade %s rolled back: %s", upgrade.id, upgrade.error)
        else:
            log.info("upgrade %s succeeded in %.2fs: epoch %d live, version %s", upgrade.id,
                     upgrade.total_s, upgrade.to_epoch, upgrade.to_version)
        self.upgrade = None
        self.stoppers = {e: s for e, s in self.stoppers.items() if s.step is not StopStep.DONE}
        self.phase = transition(self.phase, Phase.RUNNING)
        self._save()

    def _mark_live(self, gen: Generation) -> None:
        gen.live_mono = self.clock.monotonic()
        gen.role = Role.LIVE
        try:
            gen.set_version(gen.admin.server_info().version)
            gen.listener_ports = gen.admin.listener_ports()
        except (AdminUnavailable, ValueError) as exc:
            log.warning("epoch %d: LIVE but admin info unavailable: %s", gen.epoch, exc)
        log.info("epoch %d: LIVE (version %s, listener ports %s)", gen.epoch, gen.version,
                 sorted(gen.listener_ports))

    # ----------------------------------------------------------------- stop

    def _begin_stop(self, graceful: bool) -> None:
        if self.phase is Phase.STOPPED:
            return
        if self.phase is not Phase.STOPPING:
            self.phase = transition(self.phase, Phase.STOPPING)
            self.graceful_stop = graceful
            if self.upgrade is not None:
                self.upgrade.error = "supervisor stopped during the upgrade"
                self.upgrade.result = "aborted"
        elif not graceful:
            self.graceful_stop = False
        live = self.live if self.live is not None and self.live.role is Role.LIVE else None
        for gen in self.generations.values():
            if gen.alive and (gen is not live or not self.graceful_stop):
                self._end(gen, self.settings.drain.stop_grace_s)
        if live is not None and self.graceful_stop and self.shutdown_window is None:
            self.shutdown_window = DrainWindow(self.settings.drain, self.clock.monotonic())
            try:
                live.admin.drain_listeners(graceful=True)
                log.info("epoch %d: draining listeners for shutdown (max %.0fs)", live.epoch,
                         self.settings.drain.drain_max_s)
            except AdminUnavailable as exc:
                log.warning("epoch %d: drain request failed (%s); stopping it", live.epoch, exc)
                self._end(live, self.settings.drain.stop_grace_s)
        self._save()

    def _step_stopping(self) -> None:
        for stopper in self.stoppers.values():
            stopper.tick()
        live = self.live
        if (live is not None and live.alive and live.epoch not in self.stoppers
                and self.shutdown_window is not None):
            live.connections = count_downstream(live.pid, live.listener_ports)
            verdict = self.shutdown_window.decide(self.clock.monotonic(), live.connections)
            if verdict is not Verdict.WAIT:
                log.info("epoch %d: shutdown drain ends (%s), %s connection(s) left",
                         live.epoch, verdict.value, live.connections)
                self._end(live, self.settings.drain.stop_grace_s)
        if not any(g.alive for g in self.generations.values()):
            self.phase = transition(self.phase, Phase.STOPPED)

    # ----------------------------------------------------------------- the phase machine

    def _step(self) -> None:
        if self.phase is Phase.STARTING:
            self._step_starting()
        elif self.phase is Phase.RUNNING:
            self._step_running()
        elif self.phase is Phase.UPGRADING:
            self._step_upgrading()
        elif self.phase is Phase.DRAINING:
            self._step_draining()
        elif self.phase is Phase.STOPPING:
            self._step_stopping()
        elif self.phase is Phase.FAILED:
            self._begin_stop(graceful=False)

    def _step_starting(self) -> None:
        gen = self.live
        assert gen is not None
        if not gen.alive:
            self._fail(f"Envoy {gen.process.describe_exit()} during start: {_last_log(gen)}",
                       ExitCode.START_FAILED)
        elif gen.admin.is_ready():
            self._mark_live(gen)
            self.phase = transition(self.phase, Phase.RUNNING)
            self._save()
        elif self.ready_deadline is not None and self.ready_deadline.expired():
            self._fail(f"Envoy not LIVE within {self.settings.ready_timeout_s:g}s: "
                       f"{_last_log(gen)}", ExitCode.START_FAILED)

    def _step_running(self) -> None:
        live = self.live
        assert live is not None
        if not live.alive:
            self._fail(f"Envoy epoch {live.epoch} {live.process.describe_exit()}: "
                       f"{_last_log(live)}")
            return
        now = self.clock.monotonic()
        if now - self._last_sample >= _CONNECTION_SAMPLE_S:
            self._last_sample = now
            live.connections = count_downstream(live.pid, live.listener_ports)

    def _fail(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        log.error("%s", message)
        self.failure = message
        self.exit_code = code
        self.phase = transition(self.phase, Phase.FAILED)
        self._begin_stop(graceful=False)

    # ----------------------------------------------------------------- state

    def _status(self) -> dict[str, Any]:
        now = self.clock.monotonic()
        live = self.live
        return {
            "phase": str(self.phase),
            "supervisor_pid": os.getpid(),
            "state_dir": str(self.state.root),
            "base_id": self.settings.base_id,
            "epoch": live.epoch if live is not None else None,
            "live": live.to_json() if live is not None and live.alive else None,
            "generations": [g.to_json() for g in self.generations.values() if g.alive],
            "upgrade": self.upgrade.to_json(now) if self.upgrade is not None else None,
            "last_upgrade": self.history[-1] if self.history else None,
            "upgrades": len(self.history),
            "failure": self.failure,
            "drain_policy": {
                "drain_min_s": self.settings.drain.drain_min_s,
                "drain_max_s": self.settings.drain.drain_max_s,
                "strategy": str(self.settings.drain.strategy),
                "stop_grace_s": self.settings.drain.stop_grace_s,
            },
        }

    def _publish(self) -> None:
        self._snapshot = self._status()  # one assignment: the control thread reads it whole

    def _save(self) -> None:
        status = self._status()
        status["history"] = self.history
        status["upgrade_counter"] = self._upgrade_counter
        self.state.save(status)
        self._snapshot = status


def _same_process(pid: int, create_time: Any) -> bool:
    import psutil  # noqa: PLC0415

    try:
        proc = psutil.Process(pid)
        return isinstance(create_time, float) and abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def _existing_file(raw: Any, default: Path, what: str) -> Path:
    if raw is None:
        return default
    path = Path(str(raw))
    if not path.is_file():
        raise errors.BadInput(f"{what} not found: {path}")
    return path


def _last_log(gen: Generation) -> str:
    lines = tail(gen.log_path, lines=3)
    return " | ".join(lines) if lines else "(no log output)"
