"""Envoy's thread names, read from a real process whose threads name themselves the way
Envoy's do (prctl PR_SET_NAME), and the init watch that restores a generation born under
SCHED_IDLE when its workers start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl import cpu
from meshctl.clock import SystemClock
from meshctl.envoy import threads
from meshctl.manager.initwatch import InitWatch
from meshctl.manager.process import ChildProcess

# A process named like Envoy's main thread; on a line on stdin it starts a thread that is
# first unnamed (it inherits "envoy") and then takes the name given.
NAMING = """
import ctypes, sys, threading, time
libc = ctypes.CDLL(None)
def name(n):
    libc.prctl(15, n.encode(), 0, 0, 0)
name("envoy")
def worker(n, go):
    go.wait(); name(n); time.sleep(60)
print("ready", flush=True)
for line in sys.stdin:
    n, delay = line.split()
    go = threading.Event()
    threading.Thread(target=worker, args=(n, go), daemon=True).start()
    print("started", flush=True)
    time.sleep(float(delay)); go.set(); time.sleep(0.05)
    print("named", flush=True)
"""


@pytest.fixture
def naming() -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen([sys.executable, "-c", NAMING], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
        proc.kill()


def _start(proc: subprocess.Popen[str], name: str, delay_s: float = 0.0) -> None:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{name} {delay_s}\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "started\n"


def _named(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None and proc.stdout.readline() == "named\n"


def test_a_thread_is_read_again_until_it_has_a_name_of_its_own(
        naming: subprocess.Popen[str]) -> None:
    names = threads.ThreadNames(naming.pid)
    assert names.poll() and not names.workers_started()
    _start(naming, "wrk:worker_0", delay_s=0.3)
    assert names.poll() and not names.workers_started()  # created, still "envoy"
    _named(naming)
    assert names.poll() and names.workers_started()
    assert sorted(names.final.values()) == ["wrk:worker_0"]  # the main thread is not read


def test_a_binary_of_another_name_is_watched_the_same(tmp_path: Path) -> None:
    # An Envoy binary called otherwise (envoy-1.40 here): its threads start with that name.
    script = NAMING.replace('name("envoy")', 'name("envoy-1.40")')
    with subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        names = threads.ThreadNames(proc.pid)
        _start(proc, "wrk:worker_0", delay_s=0.3)
        assert names.poll() and not names.workers_started()  # created, still "envoy-1.40"
        _named(proc)
        assert names.poll() and names.workers_started()
        proc.kill()


def test_other_threads_are_not_workers(naming: subprocess.Popen[str]) -> None:
    _start(naming, "dog:main_thread")
    _named(naming)
    names = threads.ThreadNames(naming.pid)
    assert names.poll() and not names.workers_started()


def test_a_gone_process_polls_false() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not threads.ThreadNames(proc.pid).poll()


WORKERS_LATE = """
import ctypes, threading, time
libc = ctypes.CDLL(None)
name = lambda n: libc.prctl(15, n.encode(), 0, 0, 0)
name("envoy")
time.sleep(0.6)  # initializing
def worker(n):
    name(n); time.sleep(60)
for i in range(2):
    threading.Thread(target=worker, args=(f"wrk:worker_{i}",), daemon=True).start()
time.sleep(60)
"""


def test_the_init_watch_restores_the_process_when_its_first_worker_starts(
        tmp_path: Path) -> None:
    if not cpu.can_restore():
        pytest.fail("this test needs CAP_SYS_NICE (root), as the supervisor's restore does")
    clock = SystemClock()
    process = ChildProcess.spawn([sys.executable, "-c", WORKERS_LATE], os.environ,
                                 tmp_path / "child.log", idle=True)
    spawned = clock.monotonic()
    watch = InitWatch(process, epoch=1, clock=clock).start()
    try:
        time.sleep(0.3)
        initializing = cpu.idle_threads(process.pid)
        assert watch.restored is None
        deadline = time.monotonic() + 10
        while watch.restored is None and time.monotonic() < deadline:
            time.sleep(0.01)
        restored = watch.restored
        time.sleep(0.1)
        after = cpu.idle_threads(process.pid)
    finally:
        watch.stop()
        os.kill(process.pid, 9)
        os.waitpid(process.pid, 0)
    assert initializing == 1  # born idle; no worker yet, nothing touched
    assert restored is not None and restored.refused == 0 and restored.moved >= 2
    assert 0.6 <= restored.at_mono - spawned < 2.0
    assert after == 0  # the workers, created idle, were moved too


def test_the_init_watch_ends_with_the_process_and_on_stop(tmp_path: Path) -> None:
    process = ChildProcess.spawn([sys.executable, "-c", "import time; time.sleep(0.2)"],
                                 os.environ, tmp_path / "child.log", idle=True)
    watch = InitWatch(process, epoch=1, clock=SystemClock()).start()
    os.waitpid(process.pid, 0)
    watch._thread.join(timeout=5)
    assert not watch._thread.is_alive() and watch.restored is None
    watch.stop()  # idempotent once ended

    process = ChildProcess.spawn([sys.executable, "-c", "import time; time.sleep(30)"],
                                 os.environ, tmp_path / "child2.log", idle=True)
    watch = InitWatch(process, epoch=2, clock=SystemClock()).start()
    try:
        watch.stop()
        assert not watch._thread.is_alive() and watch.restored is None
    finally:
        os.kill(process.pid, 9)
        os.waitpid(process.pid, 0)
