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
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil


@dataclass
class ChildProcess:
    pid: int
    create_time: float
    """psutil's process start time: with the pid, it identifies the process across pid reuse."""
    exit_status: int | None = field(default=None)
    """The raw wait status once reaped, else None."""

    @classmethod
    def spawn(cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> ChildProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND  # no O_CLOEXEC: it is the child's stdout
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_path), flags, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawn(
            argv[0], list(argv), dict(env), file_actions=actions, setsid=True,
            setsigdef=(signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
                       signal.SIGCHLD, signal.SIGPIPE),
            setsigmask=(),
        )
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            created = 0.0
        return cls(pid=pid, create_time=created)

    @property
    def alive(self) -> bool:
        return self.exit_status is None

    def send(self, sig: int) -> bool:
        """Deliver a signal; False if the process is already gone."""
        if not self.alive:
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def describe_exit(self) -> str:
        if self.exit_status is None:
            return "running"
        if os.WIFSIGNALED(self.exit_status):
            sig = os.WTERMSIG(self.exit_status)
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(sig).name}"
            return f"killed by signal {sig}"
        return f"exited with status {os.waitstatus_to_exitcode(self.exit_status)}"


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
