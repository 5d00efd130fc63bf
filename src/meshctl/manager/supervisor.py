"""The supervisor: one main loop that owns every Envoy generation (policy; mechanism elsewhere).

The loop, every tick or when woken (signal, control request):
  1. act on recorded signals (handlers only record them),
  2. act on queued control requests,
  3. reap every exited child (and notice adopted generations that are gone),
  4. advance the phase (`Phase`) by looking at the generations,
  5. publish a status snapshot for the control socket and the health port.

An upgrade, as the phases see it:
  RUNNING      epoch N live alone
  UPGRADING    epoch N+1 spawned with the same base id; it takes N's listen sockets and N
               closes its admin listener.
  DRAINING     N+1 is LIVE, N drains. The drain window (`meshctl.drain`) ends it when idle or
               at the deadline; before signalling N, a stand-in takes N's hot-restart socket so
               that N+1 does not abort (see `meshctl.envoy.standin`).
  RUNNING      N has exited; N+1 is live alone; the upgrade is recorded.
A failed upgrade (N+1 exits, or misses its ready deadline):
  ROLLING_BACK N+1 is stopped; N never stopped serving.
  RECOVERING   if N+1 wedged the hot restart (Trap 1 in docs/traps.md: INITIALIZING left
               set, N's admin listener closed), the flag is cleared and a generation on N's
               own binary and config takes over from N under epoch N+1 again, bringing the
               admin API back;
               then DRAINING as above, and the upgrade is recorded as rolled back.
Envoy dying on its own (RUNNING, DRAINING): RESTARTING with backoff, then STARTING a fresh
generation (`--skip-hot-restart-on-no-parent`); too many crashes in a window: FAILED.
In a pod (`--slot`, see `meshctl.manager.pod`), the new generation is started by the other
slot's supervisor: RUNNING -> HANDING_OVER (ours drains) -> IDLE.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

from meshctl import cpu, errors, trust
from meshctl.clock import Clock, Deadline, SystemClock
from meshctl.drain.activity import cpu_seconds
from meshctl.drain.connections import count_downstream
from meshctl.drain.policy import DrainPolicy
from meshctl.drain.window import DrainWindow, Verdict
from meshctl.envoy import sharedmem, xds
from meshctl.envoy.admin import AdminClient, AdminUnavailable
from meshctl.envoy.argv import LaunchSpec, build_argv, build_env
from meshctl.envoy.binary import probe_binary
from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.envoy.standin import ParentStandIn
from meshctl.exitcodes import ExitCode
from meshctl.manager.control import Command, ControlServer
from meshctl.manager.generation import Generation, Role
from meshctl.manager.health import HealthServer
from meshctl.manager.initwatch import InitWatch, Restored
from meshctl.manager.metrics import Metrics
from meshctl.manager.phase import Phase, transition
from meshctl.manager.pod import GenState, PodLedger
from meshctl.manager.process import ChildProcess, become_subreaper, reap_children, tail
from meshctl.manager.restarts import CrashLoop
from meshctl.manager.settings import InitPriority, SupervisorSettings
from meshctl.manager.state import HISTORY_KEEP, StateDir
from meshctl.manager.stopper import Stopper, StopStep
from meshctl.manager.upgrade import Upgrade, init_scheduling
from meshctl.manager.xdsguard import GateCheck, GateState, XdsGuard

log = logging.getLogger(__name__)

_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
_POLICY_KEYS = ("drain_min_s", "drain_max_s", "strategy", "stop_grace_s")
# How often connections are read from the kernel: while draining (the window's input; two
# zero readings in a row end it; none before they could, `DrainWindow.first_useful_reading`)
# and in steady state (for status only). A reading walks the kernel's whole TCP table: ~20 ms
# with 40k TIME_WAIT entries here.
_DRAIN_SAMPLE_S = 0.25
# Many connections left (a gradual drain spreads the closes over seconds): the window cannot
# end before they are gone, so read less often; near idle, at the full rate again.
_DRAIN_SAMPLE_BUSY_S = 1.0
_NEAR_IDLE = 4
_CONNECTION_SAMPLE_S = 5.0
_POD_CHECK_S = 0.25  # how often a slot's supervisor reads the pod ledger
_SERVING_PHASES = frozenset({Phase.RUNNING, Phase.UPGRADING, Phase.DRAINING,
                             Phase.ROLLING_BACK, Phase.RECOVERING})


def _drain_sample_s(connections: int | None) -> float:
    return _DRAIN_SAMPLE_S if connections is None or connections <= _NEAR_IDLE \
        else _DRAIN_SAMPLE_BUSY_S


class Supervisor:
    def __init__(self, settings: SupervisorSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.ledger = (PodLedger(settings.pod_dir, settings.slot)
                       if settings.slot is not None and settings.pod_dir is not None else None)
        self.state = StateDir(settings.state_dir,
                              self.ledger.pod_dir / "hr" if self.ledger is not None else None)
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
        self.init_watch: InitWatch | None = None
        """While an upgrade's new generation initializes under SCHED_IDLE."""
        self.crashes = CrashLoop(settings.restarts, self.clock)
        self.restart_at: Deadline | None = None
        self.restarting = False
        """True from a crash until the restarted generation is LIVE: a start failure then
        counts as one more crash, not as a failed first start."""
        self.metrics = Metrics()
        self.health: HealthServer | None = None
        self._state_loaded = False
        self._pod_checked = 0.0
        self._pod_serving = False
        self._handled_failures: set[int] = set()
        self._signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._snapshot: dict[str, Any] = {}
        self._last_sample = 0.0
        self._upgrade_counter = 0
        self.control = ControlServer(self.state.control_socket, lambda: self._snapshot,
                                     self._wake)
        self.guard = XdsGuard(self.state.root / "gate.sock", self.clock)
        self._base_id_lock: socket.socket | None = None

    # ----------------------------------------------------------------- lifecycle

    def run(self) -> ExitCode:
        """Run until stopped; returns the exit code. Raises MeshctlError before anything starts
        if the state dir or the health port cannot be used."""
        self.state.prepare()
        self.state.acquire()
        self._state_loaded = False
        try:
            self._claim_base_id()
        except errors.MeshctlError:
            self.state.release()
            raise
        if os.getpid() != 1 and not become_subreaper():
            log.warning("cannot become a child subreaper: orphaned Envoys go to init")
        old_handlers: dict[int, Any] = {}
        old_wakeup = -1
        try:
            adopted = self._load_previous()
            self._state_loaded = True  # from here on the state file is ours to write
            if not adopted and self.ledger is None:
                self.files.remove_all()  # stale files of a previous, dead supervisor
            if self.settings.health_port is not None:
                self.health = HealthServer(self.settings.health_host, self.settings.health_port,
                                           self._ready, self.metrics)
                self.health.start()
            for sig in _HANDLED_SIGNALS:
                old_handlers[sig] = signal.signal(sig, self._record_signal)
            old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            self.control.start()
            if adopted:
                if any(g.xds_driven for g in adopted):
                    self.guard.serve_released()  # their gate streams reconnect to us
                self._resume(adopted)
            else:
                self._start_generation(no_parent_ok=False)
            self._publish()
            while self.phase is not Phase.STOPPED:
                self._wait(self.settings.idle_tick_s
                           if self.phase in (Phase.RUNNING, Phase.IDLE) and not self.stoppers
                           else self.settings.tick_s)
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
            if self.health is not None:
                self.health.close()
            if self._base_id_lock is not None:
                self._base_id_lock.close()
            self.state.release()
            os.close(self._wake_r)
            os.close(self._wake_w)
        return self.exit_code

    def _claim_base_id(self) -> None:
        """One supervisor per base id on this host (the two slots of a pod share theirs): the
        base id names Envoy's shared memory and hot-restart sockets, which each supervisor
        removes at start and stop. Held as an abstract Unix socket, which the kernel frees
        when we die, whatever the death. And the shared memory must not be another user's."""
        owner = self.files.shared_memory_foreign_owner()
        if owner is not None:
            raise errors.Busy(f"{self.files.shared_memory} belongs to uid {owner}: another "
                              f"user holds base id {self.settings.base_id}; choose another "
                              f"--base-id")
        if self.ledger is not None:
            return
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            lock.bind(f"\0meshctl-base-id-{self.settings.base_id}")
        except OSError as exc:
            lock.close()
            raise errors.Busy(f"base id {self.settings.base_id} is used by another meshctl "
                              f"supervisor on this host (its Envoy's shared memory would be "
                              f"ours to remove); choose another --base-id") from exc
        self._base_id_lock = lock

    def _load_previous(self) -> list[Generation]:
        """History from the state file, and the generations a crashed supervisor left running
        (its keeper kept them alive): they are adopted, not killed."""
        previous = self.state.load()
        if previous is None:
            return []
        self.history = list(previous.get("history", []))[-HISTORY_KEEP:]
        self._upgrade_counter = int(previous.get("upgrade_counter", 0))
        adopted: list[Generation] = []
        for rec in previous.get("generations") or []:
            gen = self._adopt(rec)
            if gen is not None:
                adopted.append(gen)
        if adopted and previous.get("base_id") != self.settings.base_id:
            raise errors.Busy(
                f"Envoy epoch {adopted[-1].epoch} (pid {adopted[-1].pid}) from a previous "
                f"supervisor runs with --base-id {previous.get('base_id')}; start meshctl with "
                f"that base id to adopt it, or stop it first"
            )
        return sorted(adopted, key=lambda g: g.epoch)

    def _adopt(self, rec: dict[str, Any]) -> Generation | None:
        try:
            keeper_pid = rec.get("keeper_pid")
            process = ChildProcess.adopt(
                pid=int(keeper_pid or rec["pid"]),
                create_time=float(rec.get("keeper_create_time") or rec["create_time"]),
                envoy_pid=int(rec["pid"]), envoy_create_time=float(rec["create_time"]),
                keeper=keeper_pid is not None,
            )
            epoch = int(rec["epoch"])
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed generation record in the state file: %r", rec)
            return None
        if process is None:
            return None
        gen = Generation(
            epoch=epoch, binary=Path(rec["binary"]), config=Path(rec["config"]),
            process=process, admin=AdminClient(self.state.admin_address_file(epoch), 1.0),
            log_path=Path(rec.get("log") or self.state.log_file(epoch)),
            started_mono=self.clock.monotonic(), started_wall=float(rec.get("started_at") or 0),
            version=rec.get("version"),
            hot_restart_version=rec.get("hot_restart_version"),
            listener_ports=frozenset(int(p) for p in rec.get("listener_ports") or []),
            xds_driven=bool(rec.get("xds_driven")),
        )
        log.warning("epoch %d: adopted running Envoy pid %d from a previous supervisor",
                    epoch, gen.pid)
        return gen

    def _resume(self, adopted: list[Generation]) -> None:
        """Carry on from what a crashed supervisor left: the newest generation serves (or is
        still starting); an older one still alive was draining, and drains again."""
        for gen in adopted:
            self.generations[gen.epoch] = gen
        self.next_epoch = adopted[-1].epoch + 1
        newest = adopted[-1]
        older = [g for g in adopted if g is not newest]
        if not older:
            self.live = newest
            self.ready_deadline = Deadline(self.clock, self.settings.ready_timeout_s)
            return  # STARTING: _step_starting marks it LIVE once /ready says so
        old = older[-1]
        for extra in older[:-1]:
            self._end(extra, self.settings.drain.stop_grace_s)
        self.live = old
        old.role = Role.LIVE
        upgrade = self._new_upgrade(old, newest.epoch, newest.binary, newest.config,
                                    self.settings.drain,
                                    "resumed after a supervisor restart",
                                    self.settings.ready_timeout_s)
        upgrade.to_pid = newest.pid
        self.ready_deadline = Deadline(self.clock, upgrade.ready_timeout_s)
        self.phase = transition(self.phase, Phase.UPGRADING)

    def _start_generation(self, *, no_parent_ok: bool) -> None:
        s = self.settings
        binary, config = ((self.live.binary, self.live.config) if self.live is not None
                          else (s.binary, s.config))
        if self.ledger is not None:
            self._start_in_pod(binary, config)
        else:
            self.live = self._spawn(binary, config, s.drain, no_parent_ok=no_parent_ok)
        self.ready_deadline = Deadline(self.clock, s.ready_timeout_s)
        self._save()

    def _start_in_pod(self, binary: Path, config: Path) -> None:
        """The other slot's generation is live: hot-restart from it (the image swap). Nothing
        is live: a cold start, on the next epoch of the pod's ledger."""
        assert self.ledger is not None
        other = self.ledger.other_live()
        if other is not None:
            epoch = other[0] + 1
            log.info("slot %s: hot restart from slot %s's epoch %d", self.settings.slot,
                     other[1].get("slot"), other[0])
            self.live = self._spawn(binary, config, self.settings.drain, epoch=epoch)
            return
        known = [int(k) for k in self.ledger.read()["generations"]]
        epoch = max(known) + 1 if known else 0
        if epoch == 0:
            self.files.remove_all()
        else:
            self._clear_stale_flag(binary)
            self.files.leave_dead_parent(epoch - 1)
        self.live = self._spawn(binary, config, self.settings.drain, epoch=epoch,
                                no_parent_ok=epoch > 0)

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
        self.guard.close()
        # A run refused before it could read its state file (corrupt: exit 7) does not know
        # whose these files are: they may be a live Envoy's, which a later run adopts.
        if self._state_loaded and not any(g.alive for g in self.generations.values()):
            # In a pod the hot-restart files are shared: the other slot's generation may be
            # live on them.
            if self.ledger is None or not self.ledger.slot_alive(
                    "b" if self.settings.slot == "a" else "a"):
                self.files.remove_all()
            for gen in self.generations.values():
                with contextlib.suppress(FileNotFoundError):
                    gen.admin.address_file.unlink()
        self.live = None
        if self._state_loaded:  # never overwrite a state file we could not read
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
        self._begin_upgrade(self.live.binary, self.live.config, self.settings.drain, "SIGHUP",
                            self.settings.ready_timeout_s)

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
            binary = trust.check_trusted(_existing_file(
                cmd.args.get("binary"), self.live.binary, "Envoy binary"), "Envoy binary")
            config = trust.check_trusted(_existing_file(
                cmd.args.get("config"), self.live.config, "config file"), "Envoy config")
            policy = self._policy_from(cmd.args)
            ready_timeout_s = _positive(cmd.args.get("ready_timeout_s"),
                                        self.settings.ready_timeout_s, "ready timeout")
            upgrade = self._begin_upgrade(
                binary, config, policy, "request", ready_timeout_s,
                listener_change_ok=bool(cmd.args.get("listener_change_ok", False)))
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
        if self.upgrade is not None:
            return (f"upgrade {self.upgrade.id} (epoch {self.upgrade.from_epoch} -> "
                    f"{self.upgrade.to_epoch}) is in progress ({self.phase})")
        return f"the supervisor is {self.phase}"

    # ----------------------------------------------------------------- processes

    def _spawn(self, binary: Path, config: Path, policy: DrainPolicy, *,
               no_parent_ok: bool = False, epoch: int | None = None,
               idle: bool = False, config_yaml: str | None = None) -> Generation:
        if epoch is None:
            epoch = self.next_epoch
        self.next_epoch = epoch + 1
        admin_file = self.state.admin_address_file(epoch)
        with contextlib.suppress(FileNotFoundError):
            admin_file.unlink()  # a stale address would make us poll someone else
        spec = LaunchSpec(
            binary=binary, config=config, base_id=self.settings.base_id, epoch=epoch,
            socket_prefix=self.state.socket_prefix, admin_address_path=admin_file,
            drain_time_s=policy.envoy_drain_time_s,
            parent_shutdown_time_s=policy.envoy_parent_shutdown_time_s,
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
        self._prune_logs(keep_from=epoch - 5)
        try:
            process = ChildProcess.spawn(build_argv(spec), build_env(spec, os.environ), log_path,
                                         keeper=self.settings.keeper, idle=idle)
        except OSError as exc:
            raise errors.StartFailed(f"cannot start {binary}: {exc.strerror}") from exc
        gen = Generation(
            epoch=epoch, binary=binary, config=config, process=process,
            admin=AdminClient(admin_file, timeout_s=1.0), log_path=log_path,
            started_mono=self.clock.monotonic(), started_wall=self.clock.wall(),
            xds_driven=xds.is_xds_driven(config),
        )
        self.generations[epoch] = gen
        if self.ledger is not None:
            self.ledger.record(epoch, GenState.STARTING, pid=gen.pid, binary=str(binary))
        log.info("epoch %d: started pid %d (%s, %s)", epoch, gen.pid, binary, config)
        return gen

    def _prune_logs(self, keep_from: int) -> None:
        for path in self.state.logs.glob("envoy-*.log"):
            with contextlib.suppress(ValueError, OSError):
                if int(path.stem.split("-")[1].split(".")[0]) < keep_from:
                    path.unlink()

    def _reap(self) -> None:
        by_pid = {g.process.pid: g for g in self.generations.values() if g.alive}
        for pid, status in reap_children():
            gen = by_pid.get(pid)
            if gen is None:
                log.debug("reaped unknown child %d", pid)  # an orphan handed to PID 1
                continue
            gen.process.exit_status = status
            self._exited(gen)
        for gen in by_pid.values():
            if gen.process.poll_adopted():
                self._exited(gen)

    def _exited(self, gen: Generation) -> None:
        gen.role = Role.EXITED
        log.info("epoch %d: pid %d %s", gen.epoch, gen.pid, gen.process.describe_exit())
        if gen.epoch in self.stoppers:  # its stop's last named step, before any record closes
            self.stoppers[gen.epoch].tick()
        if self.ledger is not None:
            self.ledger.record(gen.epoch, GenState.EXITED if gen.live_mono is not None
                               else GenState.FAILED, exit=gen.process.describe_exit())
        # A generation gone while its child lives: answer on its socket from now on, or the
        # child blocks on its next stats request and aborts at its parent-shutdown timer.
        if self._child_alive(gen) and gen.epoch not in self.stand_ins:
            self._bind_stand_in(gen)
        # Its child (epoch+1) may still talk to its parent socket through a stand-in: keep it.
        self.files.remove_generation(gen.epoch, keep_parent=gen.epoch in self.stand_ins)
        with contextlib.suppress(FileNotFoundError):
            gen.admin.address_file.unlink()
        # It was the only sender to its parent's stand-in: that stand-in is done.
        stand_in = self.stand_ins.pop(gen.epoch - 1, None)
        if stand_in is not None:
            stand_in.close()

    def _child_alive(self, gen: Generation) -> bool:
        """Is generation epoch+1 running: here, or (in a pod) in the other slot?"""
        child = self.generations.get(gen.epoch + 1)
        if child is not None:
            return child.alive
        if self.ledger is not None:
            return self.ledger.state_of(gen.epoch + 1) in (GenState.STARTING, GenState.LIVE)
        return False

    def _bind_stand_in(self, gen: Generation) -> bool:
        return self._bind_stand_in_for(gen.epoch)

    def _bind_stand_in_for(self, epoch: int) -> bool:
        stand_in = ParentStandIn(self.files.parent_socket(epoch), epoch)
        try:
            stand_in.start()
        except OSError as exc:
            log.error("epoch %d: stand-in could not bind (%s)", epoch, exc)
            return False
        self.stand_ins[epoch] = stand_in
        return True

    def _end(self, gen: Generation, grace_s: float) -> None:
        """Start ending a generation (named steps). If its child is alive, a stand-in answers
        on its socket first, so the child does not abort (Trap 2, docs/traps.md)."""
        stopping = self.stoppers.get(gen.epoch)
        # An epoch number is reused after a rollback: only this process's own stopper counts.
        if (stopping is not None and stopping.process is gen.process) or not gen.alive:
            return
        if (self._child_alive(gen) and gen.epoch not in self.stand_ins
                and not self._bind_stand_in(gen)):
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

    # ----------------------------------------------------------------- upgrade

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
        upgrade = self._new_upgrade(old, self.next_epoch, binary, config, policy, reason,
                                    ready_timeout_s)
        self.phase = transition(self.phase, Phase.UPGRADING)
        idle, upgrade.init_scheduling = init_scheduling(
            self.settings.init_priority, cpu.can_restore(),
            cpu.pressure() if self.settings.init_priority is InitPriority.AUTO else None)
        upgrade.gate, gate_yaml = self.guard.prepare(old, config, self.next_epoch,
                                                     listener_change_ok=listener_change_ok)
        new = self._spawn(binary, config, policy, idle=idle, config_yaml=gate_yaml)
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
        new = self.generations[upgrade.to_epoch]
        if not new.alive:
            upgrade.error = (f"new generation {new.process.describe_exit()} before LIVE: "
                             f"{_last_log(new)}")
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
                             f"{_last_log(new)}")
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
        self._end(failed, self.settings.drain.stop_grace_s)
        self._save()

    def _step_rolling_back(self) -> None:
        """The failed generation is being stopped; once it is gone, repair what it left."""
        upgrade = self.upgrade
        assert upgrade is not None
        failed = self.generations[upgrade.to_epoch]
        if failed.epoch in self.stoppers:
            self.stoppers[failed.epoch].tick()
        if failed.alive:
            return
        self.stoppers.pop(failed.epoch, None)  # its epoch goes to the next generation
        self._keep_failed_log(failed, upgrade)
        # The next generation takes the failed one's epoch: Envoy finds its parent's socket
        # by epoch - 1, and the live one is failed.epoch - 1.
        self.next_epoch = failed.epoch
        old = self.live
        if old is None or not old.alive:
            self._crashed("the old generation exited during the rollback")
            return
        reason = self._needs_recovery(old)
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
        upgrade.gate, gate_yaml = self.guard.prepare(old, old.config, self.next_epoch)
        if failed_gate is not None and upgrade.gate is not None:
            upgrade.gate.baseline = failed_gate.baseline  # read before the admin closed
        self._spawn(old.binary, old.config, upgrade.drain, config_yaml=gate_yaml)
        # A gated recovery waits for the same control plane as the failed generation: it gets
        # the upgrade's own ready timeout, so that a failed upgrade ends within twice that.
        self.ready_deadline = Deadline(self.clock, upgrade.ready_timeout_s
                                       if upgrade.gate is not None
                                       else self.settings.ready_timeout_s)
        self.phase = transition(self.phase, Phase.RECOVERING)
        self._save()

    def _needs_recovery(self, old: Generation) -> str | None:
        """Why the old generation cannot be left as it is after a failed child (Trap 1,
        docs/traps.md)."""
        shm = self.files.shared_memory
        try:
            version = _hot_restart_version(old)
            if shm.exists() and sharedmem.clear_initializing(shm, version):
                log.warning("cleared the stale INITIALIZING flag in %s", shm)
                return "the failed generation left the hot-restart flag set"
        except (errors.MeshctlError, sharedmem.UnknownLayout, OSError) as exc:
            log.error("cannot check %s (%s): the next upgrade may be refused by Envoy",
                      shm, exc)
        if not old.admin.is_ready():
            return f"epoch {old.epoch} lost its admin listener to the failed generation"
        return None

    def _step_recovering(self) -> None:
        upgrade = self.upgrade
        assert upgrade is not None
        recovery = self.generations[upgrade.to_epoch]
        if (recovery.alive and not self._gate_holds(upgrade.gate, recovery)
                and recovery.admin.is_ready()):
            self._handover(recovery)
            return
        if recovery.alive and not (self.ready_deadline and self.ready_deadline.expired()):
            return
        if recovery.alive:
            self._end(recovery, self.settings.drain.stop_grace_s)
            self.stoppers[recovery.epoch].tick()
            return
        upgrade.recovery = "failed"
        self.stoppers.pop(recovery.epoch, None)
        self.next_epoch = recovery.epoch
        why = (upgrade.gate.reason() if upgrade.gate is not None
               and upgrade.gate.state is GateState.HELD else _last_log(recovery))
        upgrade.error = (f"{upgrade.error}; recovery failed too ({why}): "
                         f"epoch {upgrade.from_epoch} serves without its admin API until the "
                         f"next upgrade")
        with contextlib.suppress(errors.MeshctlError, sharedmem.UnknownLayout, OSError):
            assert self.live is not None
            sharedmem.clear_initializing(
                self.files.shared_memory, _hot_restart_version(self.live))
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
        old = self.generations[upgrade.from_epoch]
        now = self.clock.monotonic()
        if self.live is not None and not self.live.alive:
            self._crashed(f"epoch {self.live.epoch} {self.live.process.describe_exit()} while "
                          f"the old generation was draining: {_last_log(self.live)}")
            return
        if not old.alive:
            if upgrade.drain_end is None:
                upgrade.drain_end = "envoy" if old.process.exit_status == 0 else "exited"
            upgrade.drain_s = round(upgrade.window.elapsed(now), 3)
            upgrade.event(now, "old_exited")
            self._finish_upgrade("rolled_back" if upgrade.recovery else "succeeded")
            return
        if old.epoch in self.stoppers:
            self.stoppers[old.epoch].tick()
            return
        if not self._drain_reading_due(upgrade.window, now, old):
            return
        self._last_sample = now
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

    def _drain_reading_due(self, window: DrainWindow, now: float, draining: Generation) -> bool:
        """Whether to read `draining`'s connections now (an old generation after an upgrade,
        or the live one at shutdown): always at the deadline, else not before a reading can
        help end the window, then at the interval its last count calls for, and not while it
        is visibly serving (it used more than 8 % of a core since the last look: a reading
        costs milliseconds of our CPU beside Envoy's workers and could only say "wait";
        `meshctl.drain.activity`)."""
        deadline = window.time_left(now) == 0
        if not deadline and not (
                now >= window.first_useful_reading(_DRAIN_SAMPLE_S)
                and now - self._last_sample >= _drain_sample_s(draining.connections)):
            return False
        if window.readings.allow(now, cpu_seconds(draining.pid), force=deadline):
            return True
        self._last_sample = now  # looked and skipped: the next look is an interval later
        return False

    def _finish_upgrade(self, result: str) -> None:
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
        self.stoppers = {e: s for e, s in self.stoppers.items() if s.step is not StopStep.DONE}
        if self.live is not None and self.live.xds_driven and self.live.alive:
            self.guard.observe(self.live, force=True)  # the status the waiting CLI reads
        if self.phase is not Phase.STOPPING:
            self.phase = transition(self.phase, Phase.RUNNING)
        self._save()

    def _end_init_watch(self) -> Restored | None:
        """Stops the watch of an idle init, if any: when it restored the generation."""
        watch, self.init_watch = self.init_watch, None
        if watch is None:
            return None
        watch.stop()
        return watch.restored

    def _mark_live(self, gen: Generation) -> None:
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
        if gen.xds_driven:  # what LDS, RDS, CDS and EDS gave it, and its listener ports
            self.guard.went_live(gen, self.upgrade.gate if self.upgrade is not None else None)
        self.metrics.set_live(gen.epoch, gen.version)
        if self.ledger is not None:
            self.ledger.record(gen.epoch, GenState.LIVE, pid=gen.pid, version=gen.version)
        log.info("epoch %d: LIVE (version %s, listener ports %s)", gen.epoch, gen.version,
                 sorted(gen.listener_ports))

    # ----------------------------------------------------------------- crashes

    def _crashed(self, message: str) -> None:
        """Envoy died on its own: restart it after a backoff, unless it crash-loops."""
        log.error("%s", message)
        if self.upgrade is not None:
            self.upgrade.error = message
            self._finish_upgrade_aborted()
        for gen in self.generations.values():
            if gen.alive:
                self._end(gen, self.settings.drain.stop_grace_s)
        delay = self.crashes.next_delay()
        self.metrics.envoy_restarted("crash")
        if delay is None:
            p = self.settings.restarts
            self._fail(f"crash loop: Envoy died {self.crashes.recent()} times within "
                       f"{p.window_s:g}s (limit {p.max_restarts}); last: {message}")
            return
        log.warning("restarting Envoy in %.1fs (crash %d within %gs)", delay,
                    self.crashes.recent(), self.settings.restarts.window_s)
        self.restarting = True
        self.restart_at = Deadline(self.clock, delay)
        self.phase = transition(self.phase, Phase.RESTARTING)
        self._save()

    def _finish_upgrade_aborted(self) -> None:
        upgrade = self.upgrade
        assert upgrade is not None
        upgrade.result = "aborted"
        upgrade.total_s = round(self.clock.monotonic() - upgrade.requested_mono, 3)
        record = upgrade.to_json(self.clock.monotonic())
        self.history = [*self.history, record][-HISTORY_KEEP:]
        self.metrics.upgrade_finished(record)
        self.upgrade = None

    def _step_restarting(self) -> None:
        for stopper in self.stoppers.values():
            stopper.tick()
        if any(g.alive for g in self.generations.values()):
            return
        if self.restart_at is not None and not self.restart_at.expired():
            return
        self._clear_stale_flag()
        self.files.leave_dead_parent(self.next_epoch - 1)
        self.phase = transition(self.phase, Phase.STARTING)
        try:
            self._start_generation(no_parent_ok=True)
        except errors.StartFailed as exc:
            self._crashed(str(exc))

    def _clear_stale_flag(self, binary: Path | None = None) -> None:
        """No generation runs: a flag left by one that died initializing would refuse the
        next start (Trap 1, docs/traps.md)."""
        shm = self.files.shared_memory
        binary = binary or (self.live.binary if self.live is not None else None)
        if binary is None or not shm.exists():
            return
        with contextlib.suppress(errors.MeshctlError, sharedmem.UnknownLayout, OSError):
            if sharedmem.clear_initializing(shm, probe_binary(binary).hot_restart_version):
                log.warning("cleared the stale INITIALIZING flag in %s", shm)

    # ----------------------------------------------------------------- stop

    def _begin_stop(self, graceful: bool) -> None:
        if self.phase is Phase.STOPPED:
            return
        # Stopped while handing over (in a pod, the swap sets this slot back to standby as
        # soon as the new slot is ready): the drain under way is the graceful stop.
        handover = (self.upgrade.window if self.phase is Phase.HANDING_OVER
                    and self.upgrade is not None else None)
        if self.phase is not Phase.STOPPING:
            self.phase = transition(self.phase, Phase.STOPPING)
            self.graceful_stop = graceful
            if self.upgrade is not None:
                self.upgrade.error = "supervisor stopped during the upgrade"
                self._finish_upgrade_aborted()
        elif not graceful:
            self.graceful_stop = False
        live = self.live if self.live is not None and (
            self.live.role is Role.LIVE or handover is not None) else None
        for gen in self.generations.values():
            if gen.alive and (gen is not live or not self.graceful_stop):
                self._end(gen, self.settings.drain.stop_grace_s)
        if live is not None and live.alive and self.graceful_stop and handover is not None:
            self.shutdown_window = handover
            log.info("epoch %d: stopping while handing over: its drain goes on (%.1fs left)",
                     live.epoch, handover.time_left(self.clock.monotonic()))
        elif live is not None and live.alive and self.graceful_stop and \
                self.shutdown_window is None:
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
        now = self.clock.monotonic()
        if (live is not None and live.alive and live.epoch not in self.stoppers
                and self.shutdown_window is not None
                and self._drain_reading_due(self.shutdown_window, now, live)):
            self._last_sample = now
            live.connections = count_downstream(live.pid, live.listener_ports)
            verdict = self.shutdown_window.decide(now, live.connections)
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
        elif self.phase is Phase.ROLLING_BACK:
            self._step_rolling_back()
        elif self.phase is Phase.RECOVERING:
            self._step_recovering()
        elif self.phase is Phase.DRAINING:
            self._step_draining()
        elif self.phase is Phase.RESTARTING:
            self._step_restarting()
        elif self.phase is Phase.HANDING_OVER:
            self._step_handing_over()
        elif self.phase is Phase.IDLE:
            for stopper in self.stoppers.values():
                stopper.tick()
        elif self.phase is Phase.STOPPING:
            self._step_stopping()
        elif self.phase is Phase.FAILED:
            self._begin_stop(graceful=False)

    def _step_starting(self) -> None:
        gen = self.live
        assert gen is not None
        if not gen.alive:
            message = f"Envoy {gen.process.describe_exit()} during start: {_last_log(gen)}"
        elif gen.admin.is_ready():
            self._mark_live(gen)
            self.restarting = False
            self.phase = transition(self.phase, Phase.RUNNING)
            self._save()
            return
        elif self.ready_deadline is not None and self.ready_deadline.expired():
            message = f"Envoy not LIVE within {self.settings.ready_timeout_s:g}s: " \
                      f"{_last_log(gen)}"
        else:
            return
        if self.restarting:
            self._crashed(message)
        else:
            self._fail(message, ExitCode.START_FAILED)

    def _step_running(self) -> None:
        for stopper in self.stoppers.values():
            stopper.tick()
        self.stoppers = {e: s for e, s in self.stoppers.items() if s.step is not StopStep.DONE}
        live = self.live
        assert live is not None
        if not live.alive:
            self._crashed(f"Envoy epoch {live.epoch} {live.process.describe_exit()}: "
                          f"{_last_log(live)}")
            return
        now = self.clock.monotonic()
        if self.ledger is not None and now - self._pod_checked >= _POD_CHECK_S:
            self._pod_checked = now
            self._check_pod(live)
            if self.phase is not Phase.RUNNING:
                return
        if live.xds_driven:
            self.guard.observe(live)  # LDS may add or remove listeners at run time
        if now - self._last_sample >= _CONNECTION_SAMPLE_S:
            self._last_sample = now
            live.connections = count_downstream(live.pid, live.listener_ports)

    # ----------------------------------------------------------------- pod slots

    def _check_pod(self, live: Generation) -> None:
        """What the other slot did: took over from us, failed and wedged us, or ended our
        parent (whose socket we then answer on)."""
        assert self.ledger is not None
        parent = live.epoch - 1
        if (parent >= 0 and parent not in self.stand_ins and parent not in self.generations
                and self.ledger.state_of(parent) == GenState.EXITED):
            # The other slot's supervisor will leave with its stand-in; ours replaces it
            # (rename over the same path) so that our generation never finds it missing.
            self._bind_stand_in_for(parent)
        newer = self.ledger.newer(live.epoch)
        if newer is None:
            return
        epoch, entry = newer
        if entry.get("state") == GenState.LIVE:
            self._begin_handover(live, epoch, entry)
        elif entry.get("state") == GenState.FAILED and epoch not in self._handled_failures:
            self._handled_failures.add(epoch)
            reason = self._needs_recovery(live)
            if reason is not None:
                log.warning("slot %s's epoch %d failed: %s; recovering", entry.get("slot"),
                            epoch, reason)
                self.metrics.envoy_restarted("recovery")
                self.next_epoch = epoch
                self._begin_upgrade(live.binary, live.config, self.settings.drain,
                                    f"recovery after slot {entry.get('slot')} failed",
                                    self.settings.ready_timeout_s)

    def _begin_handover(self, live: Generation, epoch: int, entry: dict[str, Any]) -> None:
        upgrade = self._new_upgrade(live, epoch, Path(str(entry.get("binary", "?"))),
                                    live.config, self.settings.drain,
                                    f"slot {entry.get('slot')} took over",
                                    self.settings.ready_timeout_s)
        upgrade.to_pid = entry.get("pid")
        upgrade.to_version = entry.get("version")
        now = self.clock.monotonic()
        upgrade.window = DrainWindow(upgrade.drain, started_at=now)
        upgrade.event(now, "drain_start")
        live.role = Role.DRAINING
        assert self.ledger is not None
        self.ledger.record(live.epoch, GenState.DRAINING)
        log.info("slot %s took over with epoch %d: epoch %d drains", entry.get("slot"), epoch,
                 live.epoch)
        self.phase = transition(self.phase, Phase.HANDING_OVER)
        self._save()

    def _step_handing_over(self) -> None:
        upgrade, old = self.upgrade, self.live
        assert upgrade is not None and upgrade.window is not None and old is not None
        now = self.clock.monotonic()
        if not old.alive:
            upgrade.drain_s = round(upgrade.window.elapsed(now), 3)
            upgrade.drain_end = upgrade.drain_end or "exited"
            upgrade.event(now, "old_exited")
            self.upgrade = None
            upgrade.result = "succeeded"
            upgrade.total_s = round(now - upgrade.requested_mono, 3)
            record = upgrade.to_json(now)
            self.history = [*self.history, record][-HISTORY_KEEP:]
            self.metrics.upgrade_finished(record)
            self.live = None
            self.phase = transition(self.phase, Phase.IDLE)
            log.info("handed over: idle until this container is switched to standby")
            self._save()
            return
        if old.epoch in self.stoppers:
            self.stoppers[old.epoch].tick()
            return
        if not self._drain_reading_due(upgrade.window, now, old):
            return
        self._last_sample = now
        upgrade.connections = old.connections = count_downstream(old.pid, old.listener_ports)
        verdict = upgrade.window.decide(now, old.connections)
        if verdict is Verdict.WAIT:
            return
        upgrade.drain_end = verdict.value
        if verdict is Verdict.DEADLINE:
            upgrade.forced_closes = old.connections or 0
        upgrade.event(now, f"drain_end_{verdict.value}")
        log.info("handover: drain window ends (%s), %s connection(s) left", verdict.value,
                 old.connections)
        self._end(old, upgrade.drain.stop_grace_s)

    def _fail(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        log.error("%s", message)
        self.failure = message
        self.exit_code = code
        self.phase = transition(self.phase, Phase.FAILED)
        self._begin_stop(graceful=False)

    # ----------------------------------------------------------------- state

    def _ready(self) -> tuple[bool, str]:
        """For the health port (another thread): reads the published snapshot only."""
        snap = self._snapshot
        phase, live = snap.get("phase"), snap.get("live")
        if phase in _SERVING_PHASES and live is not None and live.get("role") == "live":
            return True, "ready"
        if phase in (Phase.HANDING_OVER, Phase.IDLE) and snap.get("pod", {}).get("serving"):
            return True, "ready (the other slot serves)"
        return False, str(phase)

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
            "crashes": {"total": self.crashes.total, "recent": self.crashes.recent()},
            "pod": ({"slot": self.settings.slot, "dir": str(self.settings.pod_dir),
                     "serving": self._pod_serving} if self.ledger is not None else None),
            "health": (f"{self.health.host}:{self.health.port}" if self.health is not None
                       else None),
            "xds": self.guard.status() if live is not None and live.xds_driven else None,
            "drain_policy": {
                "drain_min_s": self.settings.drain.drain_min_s,
                "drain_max_s": self.settings.drain.drain_max_s,
                "strategy": str(self.settings.drain.strategy),
                "stop_grace_s": self.settings.drain.stop_grace_s,
            },
        }

    def _publish(self) -> None:
        if self.ledger is not None and self.phase in (Phase.HANDING_OVER, Phase.IDLE):
            now = self.clock.monotonic()
            if now - self._pod_checked >= _POD_CHECK_S:
                self._pod_checked = now
                self._pod_serving = self.ledger.other_live() is not None
        snap = self._status()
        self._snapshot = snap  # one assignment: the other threads read it whole
        ready, _ = self._ready()
        self.metrics.set_ready(ready)
        self.metrics.set_drain_connections(
            (snap.get("upgrade") or {}).get("drain", {}).get("connections"))
        self.metrics.set_xds(snap.get("xds"))

    def _save(self) -> None:
        status = self._status()
        status["history"] = self.history
        status["upgrade_counter"] = self._upgrade_counter
        self.state.save(status)
        self._snapshot = status


def _existing_file(raw: Any, default: Path, what: str) -> Path:
    if raw is None:
        return default
    path = Path(str(raw))
    if not path.is_file():
        raise errors.BadInput(f"{what} not found: {path}")
    return path


def _positive(raw: Any, default: float, what: str) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise errors.BadInput(f"{what} must be a number of seconds, not {raw!r}") from None
    if value <= 0:
        raise errors.BadInput(f"{what} must be positive, not {raw!r}")
    return value


def _last_log(gen: Generation) -> str:
    lines = tail(gen.log_path, lines=3)
    return " | ".join(lines) if lines else "(no log output)"


def _hot_restart_version(gen: Generation) -> str:
    """What the generation's Envoy speaks: as it said at LIVE, else from its binary."""
    return gen.hot_restart_version or probe_binary(gen.binary).hot_restart_version
