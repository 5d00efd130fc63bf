"""The chaos run's hands on the supervisor: the CLI (upgrades and status, as a user runs
them), signals to generations by pid after checking their start time, the supervisor killed
and started again, and bounded waits on its status.

Every generation is signalled by pid only after its start time matches the status' (a pid can
be reused); every SIGKILL is recorded (`chaos.causes.Kill`) so that failed requests can be
matched with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchlib import Supervisor, log
from chaos.causes import Kill
from chaos.schedule import Binary
from chaos.site import Site
from meshctl import errors
from meshctl.manager import operations
from meshctl.manager.snapshot import GenerationJSON, StatusSnapshot

POLL_S = 0.02


@dataclass(frozen=True)
class Timeouts:
    ready_s: float
    """The supervisor's --ready-timeout-s."""
    drain_max_s: float

    @property
    def settle_s(self) -> float:
        """How long a step may take to come back to RUNNING alone: a new generation that
        never looks LIVE is ended at the ready timeout, a crash restart waits its backoff, a
        recovery drains the failed generation's parent; a minute more for a loaded machine."""
        return self.ready_s + self.drain_max_s + 60.0


@dataclass
class CliCall:
    """One `meshctl` command the run ran, its exit code and the codes the fault allows."""

    what: str
    exit_code: int
    expected: frozenset[int]
    result: str
    """The upgrade record's result, or the last line of stderr."""
    wall_s: float

    @property
    def as_expected(self) -> bool:
        return self.exit_code in self.expected

    def to_json(self) -> dict[str, object]:
        return {"what": self.what, "exit_code": self.exit_code,
                "expected": sorted(self.expected), "result": self.result,
                "wall_s": round(self.wall_s, 2)}


@dataclass
class StepLog:
    """What one step did, filled by its fault."""

    calls: list[CliCall] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=dict)
    """What the fault itself found wrong (an Envoy not adopted, a command that hung)."""

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"  {text}")

    def problem(self, invariant: str, text: str) -> None:
        self.problems.setdefault(invariant, []).append(text)
        log(f"  VIOLATED {invariant}: {text}")


class Background:
    """A CLI command running in a thread while the fault acts on the supervisor."""

    def __init__(self, run: Callable[[], CliCall]) -> None:
        self._result: list[CliCall] = []
        self._thread = threading.Thread(target=lambda: self._result.append(run()), daemon=True)
        self._thread.start()

    def join(self, log_: StepLog, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._result:
            log_.calls.append(self._result[0])
        else:
            log_.problem("cli_ends", f"a meshctl command did not end within {timeout_s:g}s")


class Harness:
    def __init__(self, site: Site, supervisor: Supervisor, binaries: Mapping[Binary, Path],
                 timeouts: Timeouts) -> None:
        self.site, self.supervisor, self.binaries = site, supervisor, binaries
        self.timeouts = timeouts
        self.kills: list[Kill] = []
        self.supervisor_starts = 1

    # -- status

    def status(self) -> StatusSnapshot | None:
        try:
            return operations.status(self.site.state_dir)
        except errors.MeshctlError:
            return None

    def wait_for(self, ready: Callable[[StatusSnapshot], bool], timeout_s: float,
                 what: str, log_: StepLog) -> StatusSnapshot | None:
        """The first status for which `ready` holds; None (noted) at the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.supervisor_exit()
            if code is not None:
                log_.note(f"no {what}: the supervisor exited with {code}")
                return None
            snap = self.status()
            if snap is not None and ready(snap):
                return snap
            time.sleep(POLL_S)
        log_.note(f"no {what} within {timeout_s:g}s")
        return None

    def settle(self, log_: StepLog) -> StatusSnapshot | None:
        """Back to RUNNING with one generation and no upgrade in progress."""
        return self.wait_for(settled, self.timeouts.settle_s, "settled status", log_)

    def status_cli(self) -> tuple[int, StatusSnapshot | None]:
        """`meshctl status -o json`, as a user runs it: its exit code and its JSON."""
        done = subprocess.run([sys.executable, "-m", "meshctl", "status", "--state-dir",
                               str(self.site.state_dir), "-o", "json"],
                              capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
        snap: StatusSnapshot | None = None
        with contextlib.suppress(ValueError):
            snap = json.loads(done.stdout) if done.returncode == 0 else None
        return done.returncode, snap

    # -- upgrades through the CLI

    def upgrade(self, log_: StepLog, what: str, expected: Collection[int], *,
                binary: Path, config: Path | None = None) -> CliCall:
        call = self._upgrade(what, expected, binary, config)
        log_.calls.append(call)
        return call

    def upgrade_in_background(self, what: str, expected: Collection[int], *, binary: Path,
                              config: Path | None = None) -> Background:
        return Background(lambda: self._upgrade(what, expected, binary, config))

    def _upgrade(self, what: str, expected: Collection[int], binary: Path,
                 config: Path | None) -> CliCall:
        started = time.monotonic()
        run = self.supervisor.upgrade(binary, config or self.site.config,
                                      timeout_s=self.timeouts.settle_s)
        result = str(run.record.get("result", ""))
        if result in ("", "no JSON output"):
            result = run.stderr_tail.splitlines()[-1] if run.stderr_tail else ""
        call = CliCall(what=what, exit_code=run.exit_code, expected=frozenset(expected),
                       result=result[:300], wall_s=time.monotonic() - started)
        log(f"  {what}: exit {call.exit_code} ({call.result[:120]})"
            + ("" if call.as_expected else f"  UNEXPECTED, allowed {sorted(call.expected)}"))
        return call

    # -- signals

    def signal_generation(self, gen: GenerationJSON, signum: signal.Signals,
                          log_: StepLog) -> bool:
        """Signal Envoy itself (not its keeper) if it is still the process the status named."""
        try:
            proc = psutil.Process(gen["pid"])
            same = (gen["create_time"] is not None
                    and abs(proc.create_time() - gen["create_time"]) < 1.0)
        except psutil.Error:
            same = False
        if not same:
            log_.note(f"epoch {gen['epoch']} (pid {gen['pid']}) already gone: no "
                      f"{signum.name}")
            return False
        if signum is signal.SIGKILL:
            self.kills.append(Kill(t_s=time.monotonic(), epoch=gen["epoch"], pid=gen["pid"]))
        os.kill(gen["pid"], signum)
        return True

    def kill_supervisor(self, log_: StepLog) -> None:
        proc = self.supervisor.proc
        assert proc is not None
        proc.kill()
        proc.wait()
        log_.note(f"supervisor pid {proc.pid} killed (SIGKILL)")

    def start_supervisor(self, log_: StepLog) -> bool:
        """A new supervisor on the same state dir (it adopts what runs). From the main thread
        only: the supervisor dies with the thread that started it (PR_SET_PDEATHSIG)."""
        assert threading.current_thread() is threading.main_thread()
        try:
            self.supervisor.start(timeout_s=self.timeouts.settle_s)
        except RuntimeError as exc:
            log_.note(f"supervisor did not start again: {exc}")
            return False
        self.supervisor_starts += 1
        return True

    def supervisor_exit(self) -> int | None:
        proc = self.supervisor.proc
        return None if proc is None else proc.poll()


def settled(snap: StatusSnapshot) -> bool:
    return (snap["phase"] == "running" and snap["upgrade"] is None
            and len(snap["generations"]) == 1)


def generation(snap: StatusSnapshot, epoch: int | None) -> GenerationJSON | None:
    return next((g for g in snap["generations"] if g["epoch"] == epoch), None)
