"""Mechanism for one child process: spawn, signal, and learn of its exit. No policy here.

Envoy sets PR_SET_PDEATHSIG=SIGTERM: it dies when the *thread* that spawned it ends. So every
generation is spawned from the supervisor's main thread, which lives as long as the supervisor.
Children are spawned with os.posix_spawn (not subprocess.Popen): the supervisor reaps every
child itself with waitpid(-1), which it must do as PID 1, and Popen objects would then hold
stale state. Each child gets its own session so that a Ctrl-C on the supervisor's terminal
reaches the supervisor (which drains) and not Envoy directly (which would stop at once).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import logging
import os
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from meshctl import cpu
from meshctl.manager.snapshot import ProcessJSON

log = logging.getLogger(__name__)

UNKNOWN_EXIT = -1
"""exit_status of an adopted process that has gone: not our child, so its status is lost."""


def keeper_binary() -> Path | None:
    """dumb-init, from the `dumb-init` wheel (a dependency), or on PATH.

    Envoy sets PR_SET_PDEATHSIG=SIGTERM, so it dies with its parent. With dumb-init as that
    parent, a crash of the supervisor leaves Envoy serving (dumb-init is a few hundred lines
    of C that forwards signals and exits with its child's status): a supervisor started again
    on the same state dir adopts it.
    """
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        for f in importlib.metadata.distribution("dumb-init").files or []:
            if f.name == "dumb-init":
                path = Path(str(f.locate())).resolve()
                if os.access(path, os.X_OK):
                    return path
    found = shutil.which("dumb-init")
    return Path(found) if found else None


_DEFAULT_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGCHLD,
                    signal.SIGPIPE)
"""Reset in the child: the supervisor handles these itself."""


@dataclass
class ChildProcess:
    pid: int
    """The process the supervisor waits for: the keeper (dumb-init), or Envoy if none."""
    create_time: float
    """psutil's start time: with the pid, it identifies the process across pid reuse."""
    envoy_pid: int
    """Envoy itself (the keeper's child): its sockets are counted, SIGKILL goes to it."""
    envoy_create_time: float
    keeper: bool = False
    adopted: bool = False
    """Started by an earlier supervisor: not our child, watched by pid and start time."""
    exit_status: int | None = field(default=None)
    """The raw wait status once reaped, UNKNOWN_EXIT for a vanished adopted one, else None."""

    @classmethod
    def spawn(cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path,
              keeper: Path | None = None, *, idle: bool = False) -> ChildProcess:
        """`idle`: start under SCHED_IDLE (see `meshctl.cpu`); `restore_cpu()` ends it."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND  # no O_CLOEXEC: it is the child's stdout
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), flags, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        # --single-child: dumb-init forwards signals to Envoy only and stays in our session.
        full = [str(keeper), "--single-child", "--", *argv] if keeper else list(argv)
        # A child is born with the policy of the thread that spawns it. posix_spawn's own
        # `scheduler=` fails with EINVAL for SCHED_IDLE (glibc), so this thread takes the
        # policy for the call and leaves it at once (the caller checked it may:
        # `cpu.can_restore()`); the child never runs a moment at normal priority.
        idle = idle and cpu.set_idle(0)
        try:
            pid = os.posix_spawn(full[0], full, dict(env), file_actions=actions, setsid=True,
                                 setsigdef=_DEFAULT_SIGNALS, setsigmask=())
        finally:
            if idle and not cpu.set_normal(0):
                log.critical("the supervisor could not leave idle priority after a spawn")
        created = _create_time(pid) or 0.0
        envoy_pid, envoy_created = pid, created
        if keeper:
            found = _only_child(pid, timeout_s=2.0)
            if found is not None:
                envoy_pid, envoy_created = found
        return cls(pid=pid, create_time=created, envoy_pid=envoy_pid,
                   envoy_create_time=envoy_created, keeper=keeper is not None)

    @classmethod
    def adopt(cls, pid: int, create_time: float, envoy_pid: int, envoy_create_time: float,
              keeper: bool) -> ChildProcess | None:
        """The process recorded by an earlier supervisor, if it still runs (same start time)."""
        if not (_same(pid, create_time) and _same(envoy_pid, envoy_create_time)):
            return None
        return cls(pid=pid, create_time=create_time, envoy_pid=envoy_pid,
                   envoy_create_time=envoy_create_time, keeper=keeper, adopted=True)

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def poll_adopted(self) -> bool:
        """For an adopted process (never reaped by us): True once it is gone."""
        if self.adopted and self.alive and not _same(self.pid, self.create_time):
            self.exit_status = UNKNOWN_EXIT
            return True
        return False

    def send(self, sig: int) -> bool:
        """Deliver a signal; False if the process is already gone. Through the keeper, which
        forwards it, except SIGKILL, which cannot be forwarded and goes to Envoy itself."""
        if not self.alive:
            return False
        targets = [self.envoy_pid, self.pid] if sig == signal.SIGKILL else [self.pid]
        sent = False
        for pid in dict.fromkeys(targets):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                sent = True
        return sent

    def yield_cpu(self) -> int:
        """Let Envoy's exit work (destructors, freeing its heap) run only on CPU the serving
        generation leaves unused: every thread to SCHED_IDLE (`meshctl.cpu`), the keeper's too
        (dumb-init reaping Envoy's exit took 16 ms of CPU at normal priority in one 100 ms
        window of perf sched). Only for a generation on its way out: the move cannot be
        undone without privilege. Returns the number of threads moved (0 if it is gone, or
        its pids now name other processes)."""
        return sum(cpu.set_process_idle(pid) for pid in self._own_pids())

    def restore_cpu(self) -> tuple[int, int]:
        """Every thread of the keeper and of Envoy back under the normal policy (a generation
        started with `idle=True`, now LIVE): (threads moved, threads refused)."""
        moved = refused = 0
        for pid in self._own_pids():
            m, r = cpu.set_process_normal(pid)
            moved, refused = moved + m, refused + r
        return moved, refused

    def _own_pids(self) -> list[int]:
        """Envoy's pid and its keeper's (once if there is none), those still this child's:
        alive and not reused by another process since."""
        if not self.alive:
            return []
        pairs = dict.fromkeys([(self.envoy_pid, self.envoy_create_time),
                               (self.pid, self.create_time)])
        return [pid for pid, created in pairs if _same(pid, created)]

    def describe_exit(self) -> str:
        if self.exit_status is None:
            return "running"
        if self.exit_status == UNKNOWN_EXIT:
            return "exited (status unknown: adopted from an earlier supervisor)"
        if os.WIFSIGNALED(self.exit_status):
            return f"killed by {_signal_name(os.WTERMSIG(self.exit_status))}"
        code = os.waitstatus_to_exitcode(self.exit_status)
        if self.keeper and code > 128:  # dumb-init exits 128+N when its child died of N
            return f"killed by {_signal_name(code - 128)}"
        return f"exited with status {code}"

    def to_json(self) -> ProcessJSON:
        return {"pid": self.envoy_pid, "create_time": self.envoy_create_time,
                "keeper_pid": self.pid if self.keeper else None,
                "keeper_create_time": self.create_time if self.keeper else None,
                "adopted": self.adopted}


def _signal_name(sig: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(sig).name
    return f"signal {sig}"


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _same(pid: int, create_time: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        return (create_time is not None and abs(proc.create_time() - create_time) < 0.5
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _only_child(pid: int, timeout_s: float) -> tuple[int, float] | None:
    """The keeper's child, once it has forked it; None at once if the keeper is already gone
    (a binary that cannot start: dumb-init then exits, a zombie until we reap it).

    Each poll is one read of the kernel's list of the keeper's children, not psutil's
    `children()`, which reads /proc/<pid>/stat of every process on the machine (1.2 ms per
    call with 66 processes here): the keeper runs at idle priority during an upgrade and can
    wait for an idle CPU to fork, while we poll every 2 ms at normal priority beside the
    serving generation's workers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = _children(pid)
        if children is None:
            return None
        if children:
            created = _create_time(children[0])
            return (children[0], created) if created is not None else None
        time.sleep(0.002)
    return None


def _children(pid: int) -> list[int] | None:
    """`pid`'s children (it is single-threaded: dumb-init), [] while it has none, None once it
    is gone or a zombie. From /proc/<pid>/task/<pid>/children (Linux 3.5+); psutil's scan of
    every process where that file is missing (a kernel without CONFIG_PROC_CHILDREN)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split(maxsplit=1)[0]
        if state in (b"Z", b"X"):
            return None
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as f:
            return [int(child) for child in f.read().split()]
    except FileNotFoundError as exc:
        if not exc.filename or not str(exc.filename).endswith("/children"):
            return None  # the process is gone
    except (OSError, ValueError, IndexError):
        return None
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.Error:
        return None


_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Orphans among our descendants (an Envoy whose dumb-init was killed) become our children,
    as they would if we were PID 1, so that we reap them and no zombie is left. Under systemd
    or in a container the supervisor behaves the same either way."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def reap_children() -> list[tuple[int, int]]:
    """Collect every exited child, known or not (PID 1 must reap orphans too)."""
    reaped: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def tail(path: Path, lines: int = 5, max_bytes: int = 16384) -> list[str]:
    """The last lines of a log file, for error reports."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line for line in data.splitlines() if line.strip()][-lines:]
