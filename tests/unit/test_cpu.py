"""Threads moved to SCHED_IDLE, on real processes (the move is what the kernel reports)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from meshctl import cpu
from meshctl.manager.process import ChildProcess, keeper_binary

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


def test_a_generation_on_its_way_out_yields_with_its_keeper(tmp_path: Path) -> None:
    keeper = keeper_binary()
    assert keeper is not None, "dumb-init (a dependency) is missing"
    child = ChildProcess.spawn([sys.executable, "-c", THREADED], os.environ,
                               tmp_path / "out.log", keeper=keeper)
    try:
        assert child.keeper and child.envoy_pid != child.pid
        deadline = time.monotonic() + 10
        while "ready" not in (tmp_path / "out.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.yield_cpu() == 4 + 1  # the 4 threads of the child, and dumb-init
        assert all(cpu.is_idle(t) for t in _threads(child.envoy_pid))
        assert cpu.is_idle(child.pid)
    finally:
        child.send(signal.SIGKILL)
        os.waitpid(child.pid, 0)


def _create_time(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


def _end(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def test_the_pressure_is_psi_some_avg10() -> None:
    text = ("some avg10=12.50 avg60=4.81 avg300=18.31 total=194329968\n"
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    assert cpu.parse_some_avg10(text) == 12.5
    assert cpu.parse_some_avg10("full avg10=3.00\n") is None
    assert cpu.parse_some_avg10("some avg10=x\n") is None
    assert cpu.parse_some_avg10("") is None


def test_the_cgroup_is_the_v2_line_of_proc_self_cgroup() -> None:
    v1_and_v2 = "4:memory:/a/b\n0::/kubepods/pod1/c2\n"
    assert cpu.own_cgroup_dir(v1_and_v2) == Path("/sys/fs/cgroup/kubepods/pod1/c2")
    assert cpu.own_cgroup_dir("0::/\n") == Path("/sys/fs/cgroup")
    assert cpu.own_cgroup_dir("4:memory:/a\n") is None


def test_the_machine_pressure_is_read_here() -> None:
    some = cpu.pressure()
    assert some is not None and 0.0 <= some <= 100.0  # this kernel has PSI (/proc/pressure)


def test_cap_sys_nice_is_bit_23_of_the_effective_set() -> None:
    assert cpu.has_cap_sys_nice("Name:\tx\nCapEff:\t000001ffffffffff\n")
    assert cpu.has_cap_sys_nice("CapEff:\t0000000000800000\n")
    assert not cpu.has_cap_sys_nice("CapEff:\t00000000a80425fb\n")  # Docker's default set
    assert not cpu.has_cap_sys_nice("CapEff:\tzz\n")
    assert not cpu.has_cap_sys_nice("")


def test_a_thread_moved_to_idle_is_moved_back_with_the_privilege_we_have_here() -> None:
    assert cpu.can_restore()  # root on this machine: CAP_SYS_NICE
    proc = subprocess.Popen([sys.executable, "-c", THREADED], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert cpu.set_process_idle(proc.pid) == 4
        assert cpu.set_process_normal(proc.pid) == (4, 0)
        assert not any(cpu.is_idle(t) for t in _threads(proc.pid))
    finally:
        _end(proc)


def test_without_the_privilege_a_thread_stays_idle_and_is_reported_refused() -> None:
    # A child that gives up root (and with it CAP_SYS_NICE) cannot bring itself back: what a
    # restricted pod would see. (`resource` is imported first: /root is closed to nobody.)
    code = ("import os, sys; sys.path[:0] = " + repr(sys.path) + "\n"
            "import resource\nfrom meshctl import cpu\n"
            "os.setgid(65534); os.setuid(65534)\n"
            "assert cpu.set_idle(0)\n"
            "print(cpu.can_restore(), cpu.set_process_normal(os.getpid()), cpu.is_idle(0))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False (0, 1) True"
