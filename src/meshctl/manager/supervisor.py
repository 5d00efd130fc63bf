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
Envoy dying on its own (RUNNING, DRAINING): RESTARTING with backoff, then STARTING the next
generation, which hot-restarts from a stand-in that hands it the listening sockets the
supervisor held (`holding.py`): connections wait in their backlog instead of being refused.
Too many crashes in a window: FAILED, and the held sockets are closed.
In a pod (`--slot`, see `meshctl.manager.pod`), the new generation is started by another
slot's supervisor: RUNNING -> HANDING_OVER (ours drains) -> IDLE (an ephemeral slot then
stops: -> STOPPING -> STOPPED, exit 0).

Where each part lives: this module has the loop, the phase dispatch and the steps of start,
steady state, crash restart and stop; the upgrade's steps are `upgrading.py` and the pod
slots' `podslots.py` (both mixed into `Supervisor`, which owns the state); the mechanism they
use is `generations.py` (processes, stand-ins, ending), `drainwatch.py`, `repair.py`,
`adoption.py`, `xdsguard.py`; what crosses the control socket is `requests.py` and
`snapshot.py`; how the loop sleeps and takes signals, `wakeup.py`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
from typing import Any, assert_never

from meshctl import errors, trust
from meshctl.clock import Clock, Deadline, SystemClock
from meshctl.drain.connections import count_downstream
from meshctl.drain.window import DrainWindow, Verdict
from meshctl.envoy.admin import AdminUnavailable
from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.exitcodes import ExitCode
from meshctl.manager import adoption, repair, requests, snapshot
from meshctl.manager.control import Command, ControlServer
from meshctl.manager.drainwatch import DrainWatch
from meshctl.manager.generation import Generation, Role
from meshctl.manager.generations import Generations
from meshctl.manager.health import HealthServer
from meshctl.manager.holding import ListenerHolding, lock_path
from meshctl.manager.initwatch import InitWatch
from meshctl.manager.metrics import Metrics
from meshctl.manager.phase import Phase, transition
from meshctl.manager.pod import PodLedger
from meshctl.manager.podslots import PodSlotSteps
from meshctl.manager.process import become_subreaper
from meshctl.manager.restarts import CrashLoop
from meshctl.manager.settings import SupervisorSettings
from meshctl.manager.state import StateDir
from meshctl.manager.upgrade import Upgrade
from meshctl.manager.upgrading import last_log
from meshctl.manager.wakeup import Wakeup
from meshctl.manager.xdsguard import XdsGuard

log = logging.getLogger(__name__)

_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD)
# How often the live generation's connections are read in steady state (for status only; a
# reading walks the kernel's whole TCP table). While draining: `meshctl.manager.drainwatch`.
_CONNECTION_SAMPLE_S = 5.0
_POD_CHECK_S = 0.25  # how often a slot's supervisor reads the pod ledger
_SERVING_PHASES = frozenset({Phase.RUNNING, Phase.UPGRADING, Phase.DRAINING,
                             Phase.ROLLING_BACK, Phase.RECOVERING})


class Supervisor(PodSlotSteps):
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
        self.gens = Generations(settings, self.state, self.files, self.ledger, self.clock)
        self.live: Generation | None = None
        self.upgrade: Upgrade | None = None
        self.history: list[snapshot.UpgradeRecord] = []
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
        self.wakeup = Wakeup()
        self._snapshot: snapshot.StatusSnapshot | None = None
        self._last_sample = 0.0
        self.drain_watch = DrainWatch()
        self._upgrade_counter = 0
        self.control = ControlServer(self.state.control_socket, lambda: self._snapshot,
                                     self.wakeup.wake)
        self.guard = XdsGuard(self.state.root / "gate.sock", self.clock)
        self.holding = ListenerHolding(self.files, settings.concurrency, self.clock, self.ledger,
                                       pending_s=settings.ready_timeout_s,
                                       enabled=settings.hold_sockets)
        """Duplicates of the live generation's listening sockets: a crash refuses nothing."""
        self._base_id_lock: socket.socket | None = None
        self._save_error: str | None = None
        """Why the last state file write failed, until one succeeds (status: state_error)."""

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
        try:
            adopted = self._load_previous()
            self._state_loaded = True  # from here on the state file is ours to write
            if not adopted and self.ledger is None:
                self.files.remove_all()  # stale files of a previous, dead supervisor
            if self.settings.health_port is not None:
                self.health = HealthServer(self.settings.health_host, self.settings.health_port,
                                           self._ready, self.metrics)
                self.health.start()
            self.wakeup.install(_HANDLED_SIGNALS)
            self.control.start()
            if adopted:
                if any(g.xds_driven for g in adopted):
                    self.guard.serve_released()  # their gate streams reconnect to us
                self._resume(adopted)
            else:
                self._start_generation(no_parent_ok=False)
            self._publish()
            while self.phase is not Phase.STOPPED:
                self.wakeup.wait(self.settings.idle_tick_s
                           if self.phase in (Phase.RUNNING, Phase.IDLE) and not self.gens.stoppers
                           else self.settings.tick_s)
                self._handle_signals()
                self._handle_commands()
                self.gens.reap()
                self._step()
                if self._save_error is not None:
                    self._save()  # every tick until the file system has room again
                self._publish()
        finally:
            self._final_cleanup()
            if self.health is not None:
                self.health.close()
            if self._base_id_lock is not None:
                self._base_id_lock.close()
            self.state.release()
            self.wakeup.close()
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
        (its keeper kept them alive): they are adopted, not killed (`adoption`)."""
        previous = adoption.load(self.state, self.settings.base_id, self.clock)
        if previous is None:
            return []
        self.history = previous.history
        self._upgrade_counter = previous.upgrade_counter
        return previous.adopted

    def _resume(self, adopted: list[Generation]) -> None:
        """Carry on from what a crashed supervisor left: the newest generation serves (or is
        still starting); an older one still alive was draining, and drains again."""
        for gen in adopted:
            self.gens.by_epoch[gen.epoch] = gen
        self.gens.next_epoch = adopted[-1].epoch + 1
        if self.ledger is None:
            self._answer_for_dead_parent(adopted[0])
        newest = adopted[-1]
        older = [g for g in adopted if g is not newest]
        if not older:
            self.live = newest
            if newest.live_mono is not None and not newest.admin.is_ready():
                self._resume_without_admin(newest)
                return
            self.ready_deadline = Deadline(self.clock, self.settings.ready_timeout_s)
            return  # STARTING: _step_starting marks it LIVE once /ready says so
        old = older[-1]
        for extra in older[:-1]:
            self.gens.end(extra, self.settings.drain.stop_grace_s)
        self.live = old
        old.role = Role.LIVE
        upgrade = self._new_upgrade(old, newest.epoch, newest.binary, newest.config,
                                    self.settings.drain,
                                    "resumed after a supervisor restart",
                                    self.settings.ready_timeout_s)
        upgrade.to_pid = newest.pid
        self.ready_deadline = Deadline(self.clock, upgrade.ready_timeout_s)
        self.phase = transition(self.phase, Phase.UPGRADING)

    def _resume_without_admin(self, gen: Generation) -> None:
        """An adopted generation that served (the state file says so) but whose admin API is
        gone: a child died initializing while no supervisor ran (Trap 1). It still serves:
        waiting for its /ready and then killing it would be an outage. It is LIVE, and the
        repair runs as after any failed child: the flag is cleared, and a recovery generation
        on its own binary and config brings the admin API back. Found by the chaos run."""
        log.warning("epoch %d: adopted without its admin API (a child died initializing "
                    "while no supervisor ran); it serves, repairing", gen.epoch)
        self._mark_live(gen)
        self.phase = transition(self.phase, Phase.RUNNING)
        reason = repair.needs_recovery(self.files, gen)
        if reason is None:
            return
        self.metrics.envoy_restarted("recovery")
        try:
            self._begin_upgrade(gen.binary, gen.config, self.settings.drain,
                                f"recovery after an adoption: {reason}",
                                self.settings.ready_timeout_s)
        except errors.MeshctlError as exc:
            log.error("epoch %d: no recovery generation (%s); it serves without its admin "
                      "API until the next upgrade", gen.epoch, exc)
            if self.upgrade is not None:
                self.upgrade.error = str(exc)
                self._finish_upgrade("aborted")

    def _answer_for_dead_parent(self, oldest: Generation) -> None:
        """After an adoption: the oldest generation's parent is gone, and the stand-in that
        answered on its socket (if any) died with the supervisor before us. Without one, its
        next hot-restart message (the Terminate at --parent-shutdown-time-s) blocks it 10 s,
        then aborts it (Trap 2). Any other parent socket left in the dir is a dead stand-in's:
        nothing sends there any more."""
        keep = {p for g in self.gens.alive() for p in self.files.sockets_of(g.epoch)}
        if oldest.epoch > 0 and self.gens.bind_stand_in_for(oldest.epoch - 1):
            keep.add(self.files.parent_socket(oldest.epoch - 1))
        relays = self.files.socket_prefix.parent.glob(self.files.socket_prefix.name + "_*.r")
        for path in [*self.files.all_sockets(), *relays]:
            if path not in keep and path.exists():
                log.info("removing %s, left by the previous supervisor", path.name)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _start_generation(self, *, no_parent_ok: bool) -> None:
        s = self.settings
        binary, config = ((self.live.binary, self.live.config) if self.live is not None
                          else (s.binary, s.config))
        if self.ledger is not None:
            self._start_in_pod(binary, config)
        else:
            self.live = self.gens.spawn(binary, config, s.drain, no_parent_ok=no_parent_ok)
        self.ready_deadline = Deadline(self.clock, s.ready_timeout_s)
        self._save()

    def _final_cleanup(self) -> None:
        """Whatever happened, leave no process and no file of ours behind."""
        self.holding.drop("the supervisor stops")
        for gen in self.gens.alive():
            gen.process.send(signal.SIGKILL)
        deadline = Deadline(self.clock, 5.0)
        while self.gens.any_alive() and not deadline.expired():
            self.gens.reap()
            if self.gens.any_alive():
                self.wakeup.wait(0.05)
        self.gens.close_stand_ins()
        self.control.close()
        self.guard.close()
        # A run refused before it could read its state file (corrupt: exit 7) does not know
        # whose these files are: they may be a live Envoy's, which a later run adopts.
        if self._state_loaded and not self.gens.any_alive():
            # In a pod the hot-restart files are shared: another slot's generation (a, b or
            # an ephemeral e<N>) may be live on them.
            if self.ledger is None or not self.ledger.others_alive():
                self.files.remove_all()
                with contextlib.suppress(FileNotFoundError):
                    lock_path(self.files).unlink()
            for gen in self.gens.by_epoch.values():
                with contextlib.suppress(FileNotFoundError):
                    gen.admin.address_file.unlink()
        self.live = None
        if self._state_loaded:  # never overwrite a state file we could not read
            with contextlib.suppress(errors.StateDirError):
                self._save()

    # ----------------------------------------------------------------- events

    def _handle_signals(self) -> None:
        for signum in self.wakeup.signals():
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
        for gen in self.gens.by_epoch.values():
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
            req = requests.parse_upgrade(
                cmd.args, binary=self.live.binary, config=self.live.config,
                drain=self.settings.drain, ready_timeout_s=self.settings.ready_timeout_s)
            trust.check_trusted(req.binary, "Envoy binary")
            trust.check_trusted(req.config, "Envoy config")
            self.state.check_room("an upgrade")
            upgrade = self._begin_upgrade(req.binary, req.config, req.policy, "request",
                                          req.ready_timeout_s,
                                          listener_change_ok=req.listener_change_ok)
            cmd.answer(upgrade=upgrade.to_json(self.clock.monotonic()))
        elif cmd.op == "stop":
            graceful = bool(cmd.args.get("graceful", True))
            self._begin_stop(graceful=graceful)
            cmd.answer(phase=str(self.phase))
        else:
            raise errors.BadInput(f"unknown control operation {cmd.op!r}")

    def _busy_reason(self) -> str:
        if self.upgrade is not None:
            return (f"upgrade {self.upgrade.id} (epoch {self.upgrade.from_epoch} -> "
                    f"{self.upgrade.to_epoch}) is in progress ({self.phase})")
        return f"the supervisor is {self.phase}"

    # ----------------------------------------------------------------- crashes

    def _crashed(self, message: str) -> None:
        """Envoy died on its own: restart it after a backoff, unless it crash-loops."""
        log.error("%s", message)
        if self.upgrade is not None:
            self.upgrade.error = message
            self._finish_upgrade("aborted", then=None)
        for gen in self.gens.by_epoch.values():
            if gen.alive:
                self.gens.end(gen, self.settings.drain.stop_grace_s)
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

    def _step_restarting(self) -> None:
        self.gens.tick_stoppers()
        if self.gens.any_alive():
            return
        if self.restart_at is not None and not self.restart_at.expired():
            return
        repair.clear_before_start(self.files, self.live.binary if self.live else None)
        if self.ledger is None:  # in a pod, the epoch comes from the ledger: _start_in_pod
            self._parent_for_restart(self.gens.next_epoch - 1)
        self.phase = transition(self.phase, Phase.STARTING)
        try:
            self._start_generation(no_parent_ok=True)
        except errors.StartFailed as exc:
            self._crashed(str(exc))

    def _parent_for_restart(self, dead_epoch: int) -> None:
        """What the restarted generation finds at its parent's socket: a stand-in with the held
        sockets, or (nothing held) a dead socket, and it starts cold."""
        started = self.live.started_wall if self.live is not None else self.clock.wall()
        if self.holding.restart_from(dead_epoch):
            if self.gens.bind_stand_in_for(dead_epoch, self.holding.hold, int(started)):
                return
            # A cold start binds new sockets: with reuse_port, ours would join their group
            # and take a share of the new connections that nobody accepts.
            self.holding.drop("the stand-in to hand them over could not bind")
        self.files.leave_dead_parent(dead_epoch)

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
            # The live generation keeps its own sockets while it drains; a backlog must not
            # outlive it in us.
            self.holding.drop("the supervisor is stopping")
            if self.upgrade is not None:
                self.upgrade.error = "supervisor stopped during the upgrade"
                self._finish_upgrade("aborted", then=None)
        elif not graceful:
            self.graceful_stop = False
        live = self.live if self.live is not None and (
            self.live.role is Role.LIVE or handover is not None) else None
        for gen in self.gens.by_epoch.values():
            if gen.alive and (gen is not live or not self.graceful_stop):
                self.gens.end(gen, self.settings.drain.stop_grace_s)
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
                self.gens.end(live, self.settings.drain.stop_grace_s)
        self._save()

    def _step_stopping(self) -> None:
        self.gens.tick_stoppers()
        live = self.live
        now = self.clock.monotonic()
        if (live is not None and live.alive and live.epoch not in self.gens.stoppers
                and self.shutdown_window is not None):
            verdict = self.drain_watch.look(self.shutdown_window, live, now)
            if verdict is not None and verdict is not Verdict.WAIT:
                log.info("epoch %d: shutdown drain ends (%s), %s connection(s) left",
                         live.epoch, verdict.value, live.connections)
                self.gens.end(live, self.settings.drain.stop_grace_s)
        if not self.gens.any_alive():
            self.phase = transition(self.phase, Phase.STOPPED)

    # ----------------------------------------------------------------- the phase machine

    def _step(self) -> None:
        """Advance the phase machine one tick (`meshctl.manager.phase`); every phase is
        handled, mypy checks it (`assert_never`)."""
        match self.phase:
            case Phase.STARTING:
                self._step_starting()
            case Phase.RUNNING:
                self._step_running()
            case Phase.UPGRADING:
                self._step_upgrading()
            case Phase.ROLLING_BACK:
                self._step_rolling_back()
            case Phase.RECOVERING:
                self._step_recovering()
            case Phase.DRAINING:
                self._step_draining()
            case Phase.RESTARTING:
                self._step_restarting()
            case Phase.HANDING_OVER:
                self._step_handing_over()
            case Phase.IDLE:
                self._step_idle()
            case Phase.STOPPING:
                self._step_stopping()
            case Phase.FAILED:
                self._begin_stop(graceful=False)
            case Phase.STOPPED:
                pass  # the loop ends
            case _:
                assert_never(self.phase)

    def _step_starting(self) -> None:
        gen = self.live
        assert gen is not None
        if not gen.alive:
            message = f"Envoy {gen.process.describe_exit()} during start: {last_log(gen)}"
        elif gen.admin.is_ready():
            self._mark_live(gen)
            self.restarting = False
            self.phase = transition(self.phase, Phase.RUNNING)
            self._save()
            return
        elif self.ready_deadline is not None and self.ready_deadline.expired():
            message = f"Envoy not LIVE within {self.settings.ready_timeout_s:g}s: " \
                      f"{last_log(gen)}"
        else:
            return
        if self.restarting:
            self._crashed(message)
        else:
            self._fail(message, ExitCode.START_FAILED)

    def _step_running(self) -> None:
        self.gens.tick_stoppers()
        self.gens.drop_done_stoppers()
        live = self.live
        assert live is not None
        if not live.alive:
            self._crashed(f"Envoy epoch {live.epoch} {live.process.describe_exit()}: "
                          f"{last_log(live)}")
            return
        now = self.clock.monotonic()
        if self.ledger is not None and now - self._pod_checked >= _POD_CHECK_S:
            self._pod_checked = now
            self._check_pod(live)
            if self.phase is not Phase.RUNNING:
                return
        if live.xds_driven:
            self.guard.observe(live)  # LDS may add or remove listeners at run time
        self.holding.tick(live, self.gens.alive())
        if now - self._last_sample >= _CONNECTION_SAMPLE_S:
            self._last_sample = now
            live.connections = count_downstream(live.pid, live.listener_ports)

    def _fail(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        log.error("%s", message)
        # Clients fail fast instead of waiting in a backlog nobody will accept.
        self.holding.drop(f"giving up ({message})")
        self.failure = message
        self.exit_code = code
        self.phase = transition(self.phase, Phase.FAILED)
        self._begin_stop(graceful=False)

    # ----------------------------------------------------------------- state

    def _ready(self) -> tuple[bool, str]:
        """For the health port (another thread): reads the published snapshot only."""
        return snapshot.ready(self._snapshot)

    def _status(self) -> snapshot.StatusSnapshot:
        now = self.clock.monotonic()
        live = self.live
        return {
            "phase": str(self.phase),
            "supervisor_pid": os.getpid(),
            "state_dir": str(self.state.root),
            "base_id": self.settings.base_id,
            "epoch": live.epoch if live is not None else None,
            "live": live.to_json() if live is not None and live.alive else None,
            "generations": [g.to_json() for g in self.gens.by_epoch.values() if g.alive],
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
            "held_sockets": self.holding.status(),
            "state_error": self._save_error,
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
        upgrade = snap["upgrade"]
        drain = upgrade.get("drain") if upgrade is not None else None
        self.metrics.set_drain_connections(drain["connections"] if drain else None)
        self.metrics.set_xds(snap["xds"])
        self.metrics.set_held(snap["held_sockets"]["sockets"], snap["held_sockets"]["given"])

    def _save(self) -> None:
        """The state file (for a supervisor that adopts our generations after a crash). A
        write that fails (the state dir's file system full) leaves the last good file, is
        logged and tried again at the next save: serving must not depend on it."""
        status = self._status()
        state: dict[str, Any] = {**status, "history": self.history,
                                 "upgrade_counter": self._upgrade_counter}
        try:
            self.state.save(state)
        except errors.StateDirError as exc:
            if self._save_error != str(exc):
                log.error("%s; the state file keeps its last good content, serving goes on",
                          exc)
            self._save_error = str(exc)
        else:
            if self._save_error is not None:
                log.info("the state file is written again")
            self._save_error = None
        status["state_error"] = self._save_error  # what this attempt found, not the last one
        self._snapshot = status
