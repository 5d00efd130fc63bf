"""Threads moved to SCHED_IDLE, on real processes (the move is what the kernel reports)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

from meshctl import cpu
from meshctl.manager.process import ChildProcess

THREADED = ("import threading, time\n"
            "for _ in range(3): threading.Thread(target=time.sleep, args=(60,)).start()\n"
            "print('ready', flush=True); time.sleep(60)\n")


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def test_every_thread_of_a_process_is_moved() -> None:
    proc = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert not any(cpu.is_idle(t) for t in _threads(proc.pid))
        assert cpu.set_process_idle(proc.pid) == 4
        assert all(cpu.is_idle(t) for t in _threads(proc.pid))
        assert not cpu.is_idle(0)  # this process untouched
    finally:
        _end(proc)


def test_a_gone_process_moves_nothing() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert cpu.set_process_idle(proc.pid) == 0
    assert not cpu.set_idle(proc.pid)


def test_a_child_process_yields_only_if_it_is_still_the_same_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        created = ChildProcess.adopt(proc.pid, _create_time(proc.pid), proc.pid,
                                     _create_time(proc.pid), keeper=False)
        assert created is not None
        stale = ChildProcess(pid=proc.pid, create_time=1.0, envoy_pid=proc.pid,
                             envoy_create_time=1.0)
        assert stale.yield_cpu() == 0  # same pid, another start time: not ours
        assert not any(cpu.is_idle(t) for t in _threads(proc.pid))
        assert created.yield_cpu() == 4
    finally:
        _end(proc)


def _create_time(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
