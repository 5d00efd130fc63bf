"""Finding Envoy behind its keeper (dumb-init) after a spawn: one read of the kernel's list of
the keeper's children per poll, on real processes; gone and zombie keepers answer None."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from meshctl.manager.process import ChildProcess, _children, _only_child, keeper_binary


def test_a_spawn_through_dumb_init_finds_the_real_child_and_its_start_time(
        tmp_path: Path) -> None:
    keeper = keeper_binary()
    assert keeper is not None, "dumb-init (a dependency) is missing"
    child = ChildProcess.spawn([sys.executable, "-c", "import time; time.sleep(30)"],
                               os.environ, tmp_path / "out.log", keeper=keeper)
    try:
        real = psutil.Process(child.envoy_pid)
        assert child.envoy_pid != child.pid and real.ppid() == child.pid
        assert abs(real.create_time() - child.envoy_create_time) < 0.05
        assert _children(child.pid) == [child.envoy_pid]
    finally:
        child.send(signal.SIGKILL)
        os.waitpid(child.pid, 0)


def test_a_process_without_children_yet_is_an_empty_list_and_gone_or_zombie_is_none() -> None:
    lonely = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _children(lonely.pid) == []
        started = time.monotonic()
        assert _only_child(lonely.pid, timeout_s=0.2) is None  # waited, found none
        assert time.monotonic() - started >= 0.2
        lonely.kill()
        deadline = time.monotonic() + 5
        while psutil.Process(lonely.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        assert _children(lonely.pid) is None  # a zombie: the keeper is done
        assert _only_child(lonely.pid, timeout_s=5) is None
        assert time.monotonic() - started < 1  # at once, not at the timeout
    finally:
        lonely.kill()
        lonely.wait()
    assert _children(lonely.pid) is None  # reaped: gone


def test_a_shell_and_its_background_child() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        found = _only_child(shell.pid, timeout_s=5)
        assert found is not None
        pid, created = found
        assert psutil.Process(pid).name() == "sleep"
        assert abs(psutil.Process(pid).create_time() - created) < 0.05
    finally:
        for proc in psutil.Process(shell.pid).children():
            proc.kill()
        shell.kill()
        shell.wait()
