"""Ending a process in named steps (`meshctl.manager.stopper`): ask, wait, kill, report.

The processes are real (spawned the way the supervisor spawns Envoy); time is a FakeClock, so
the grace periods pass when the test says so. The test reaps its own children, as the
supervisor's loop does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from meshctl.clock import FakeClock
from meshctl.manager.process import ChildProcess
from meshctl.manager.stopper import KILL_WAIT_S, Stopper, StopStep

GRACE_S = 5.0

IGNORES_SIGTERM = textwrap.dedent("""
    import signal, time
    def noted(signum, frame):
        print("got SIGTERM", flush=True)
    signal.signal(signal.SIGTERM, noted)
    print("ready", flush=True)
    while True:
        time.sleep(1)
""")
OBEYS_SIGTERM = textwrap.dedent("""
    import time
    print("ready", flush=True)
    while True:
        time.sleep(1)
""")


@dataclass
class Children:
    """Spawns real child processes and makes sure none outlives the test."""

    log_dir: Path
    spawned: list[ChildProcess] = field(default_factory=list)

    def spawn(self, code: str) -> ChildProcess:
        log_path = self.log_dir / f"child-{len(self.spawned)}.log"
        process = ChildProcess.spawn([sys.executable, "-I", "-S", "-c", code],
                                     {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                                     log_path)
        self.spawned.append(process)
        self.wait_for_output(process, "ready")
        return process

    def output(self, process: ChildProcess) -> str:
        return (self.log_dir / f"child-{self.spawned.index(process)}.log").read_text()

    def wait_for_output(self, process: ChildProcess, text: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output(process):
            assert time.monotonic() < deadline, f"no {text!r} from pid {process.pid}"
            time.sleep(0.01)

    def reap(self, process: ChildProcess, timeout_s: float = 10.0) -> None:
        """Wait for the exit and record it, as the supervisor's loop does."""
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status = os.waitpid(process.pid, os.WNOHANG)
            if pid == process.pid:
                process.exit_status = status
                return
            assert time.monotonic() < deadline, f"pid {process.pid} did not exit"
            time.sleep(0.01)

    def has_exited(self, process: ChildProcess) -> bool:
        """Whether the process is gone, without reaping it."""
        info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        return info is not None

    def kill_all(self) -> None:
        for process in self.spawned:
            if process.exit_status is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(process.pid, 0)
                    process.exit_status = -1


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    kids = Children(tmp_path)
    try:
        yield kids
    finally:
        kids.kill_all()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="meshctl.manager.stopper")
    return caplog


def steps_logged(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "meshctl.manager.stopper"]


def test_a_stopper_does_nothing_until_started(children: Children, clock: FakeClock,
                                              logs: pytest.LogCaptureFixture) -> None:
    process = children.spawn(IGNORES_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 0")
    clock.advance(100)
    stopper.tick()
    assert stopper.step is StopStep.IDLE
    assert steps_logged(logs) == []
    assert not children.has_exited(process)


def test_asking_sends_sigterm_and_logs_the_grace(children: Children, clock: FakeClock,
                                                 logs: pytest.LogCaptureFixture) -> None:
    process = children.spawn(IGNORES_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 0")
    stopper.start()
    assert stopper.step is StopStep.ASKED
    children.wait_for_output(process, "got SIGTERM")
    assert steps_logged(logs) == [("INFO", "epoch 0: asking to stop (SIGTERM), grace 5.0s")]


def test_a_process_that_obeys_sigterm_is_done_without_sigkill(
    children: Children, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    process = children.spawn(OBEYS_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 1")
    stopper.start()
    children.reap(process)
    stopper.tick()
    assert stopper.step is StopStep.DONE
    assert stopper.killed is False
    assert steps_logged(logs) == [
        ("INFO", "epoch 1: asking to stop (SIGTERM), grace 5.0s"),
        ("INFO", "epoch 1: stopped (killed by SIGTERM)"),
    ]


def test_a_process_that_has_exited_but_is_not_reaped_yet_is_still_waited_for(
    children: Children, clock: FakeClock
) -> None:
    process = children.spawn(OBEYS_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 1")
    stopper.start()
    deadline = time.monotonic() + 10
    while not children.has_exited(process):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    stopper.tick()
    assert stopper.step is StopStep.ASKED  # only the reaper's word counts


def test_within_the_grace_a_process_that_ignores_sigterm_is_left_alone(
    children: Children, clock: FakeClock
) -> None:
    process = children.spawn(IGNORES_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 0")
    stopper.start()
    children.wait_for_output(process, "got SIGTERM")
    clock.advance(GRACE_S - 0.01)
    stopper.tick()
    assert stopper.step is StopStep.ASKED
    assert stopper.killed is False
    assert not children.has_exited(process)


def test_after_the_grace_a_process_that_ignores_sigterm_is_killed_and_then_done(
    children: Children, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    process = children.spawn(IGNORES_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 0")
    stopper.start()
    children.wait_for_output(process, "got SIGTERM")
    clock.advance(GRACE_S)
    stopper.tick()
    assert stopper.step is StopStep.KILLED
    assert stopper.killed is True
    children.reap(process)
    assert process.describe_exit() == "killed by SIGKILL"
    stopper.tick()
    assert stopper.step is StopStep.DONE
    assert steps_logged(logs) == [
        ("INFO", "epoch 0: asking to stop (SIGTERM), grace 5.0s"),
        ("WARNING", "epoch 0: still running after 5.0s grace, killing (SIGKILL)"),
        ("INFO", "epoch 0: stopped (killed by SIGKILL)"),
    ]


def test_starting_again_neither_asks_again_nor_extends_the_grace(
    children: Children, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    process = children.spawn(IGNORES_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 0")
    stopper.start()
    clock.advance(3)
    stopper.start()
    clock.advance(GRACE_S - 3)
    stopper.tick()
    assert stopper.step is StopStep.KILLED
    assert [level for level, _ in steps_logged(logs)] == ["INFO", "WARNING"]


def test_a_process_not_reaped_long_after_sigkill_is_reported_stuck(
    children: Children, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    process = children.spawn(IGNORES_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 2")
    stopper.start()
    clock.advance(GRACE_S)
    stopper.tick()
    clock.advance(KILL_WAIT_S - 0.01)
    stopper.tick()
    assert stopper.step is StopStep.KILLED
    clock.advance(0.01)
    stopper.tick()
    assert stopper.step is StopStep.STUCK
    assert steps_logged(logs)[-1] == (
        "ERROR", f"epoch 2: pid {process.pid} survived SIGKILL for {KILL_WAIT_S:.0f}s")


def test_a_finished_stopper_stays_finished(
    children: Children, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    process = children.spawn(OBEYS_SIGTERM)
    stopper = Stopper(process, GRACE_S, clock, "epoch 1")
    stopper.start()
    children.reap(process)
    stopper.tick()
    clock.advance(100)
    stopper.tick()
    stopper.start()
    assert stopper.step is StopStep.DONE
    assert len(steps_logged(logs)) == 2


def test_a_process_already_reaped_is_not_signalled_and_is_done_at_the_next_tick(
    children: Children, clock: FakeClock, logs: pytest.LogCaptureFixture
) -> None:
    process = children.spawn(OBEYS_SIGTERM)
    os.kill(process.pid, signal.SIGKILL)
    children.reap(process)
    assert process.send(signal.SIGTERM) is False
    stopper = Stopper(process, GRACE_S, clock, "epoch 3")
    stopper.start()
    stopper.tick()
    assert stopper.step is StopStep.DONE
    assert stopper.killed is False
    assert steps_logged(logs)[-1] == ("INFO", "epoch 3: stopped (killed by SIGKILL)")
