"""CPU scheduling policy: work that may wait yields to the proxy that serves.

Linux's SCHED_IDLE policy runs a thread only when no ordinary thread wants the CPU, and a
waking ordinary thread always preempts it. Moving a thread *to* SCHED_IDLE needs no privilege
(only the same user); moving it back needs CAP_SYS_NICE or an RLIMIT_NICE that few containers
grant, so it is only ever used for work that stays in the background until it ends: the
client commands (`meshctl.cli.priority`) and an old generation on its way out
(`ChildProcess.yield_cpu`). The policy is per thread and inherited by threads and children
created afterwards.

Where the supervisor may move threads back (`can_restore()`: CAP_SYS_NICE, as root on a host,
or a container granted SYS_NICE), a new generation also initializes under SCHED_IDLE and is
put back under the normal policy the moment its workers start (`manager.initwatch`): Envoy's
start-up burst then no longer competes with the generation that is serving.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path


def set_idle(tid: int = 0) -> bool:
    """Put one thread (0: the calling one) under SCHED_IDLE; False if that is not possible
    (gone, another user's, no SCHED_IDLE on this platform)."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except OSError:
        return False
    return True


def set_process_idle(pid: int) -> int:
    """Every thread of a process under SCHED_IDLE. Returns how many threads were moved."""
    return _move_threads(pid, set_idle)[0]


SATURATED_PCT = 80.0
"""PSI `some avg10` (share of the last 10 s in which a runnable task waited for a CPU) from
which SCHED_IDLE is not trusted to make progress. Measured on 2 cores: with the machine at
~95 % CPU under the proof's load, PSI read 50-56 % and an idle `upgrade --wait` still
finished in 2.7 s (3.8 s at nice 10, which slowed the traffic more)."""
CAP_SYS_NICE = 23


def has_cap_sys_nice(proc_status: str) -> bool:
    """From /proc/self/status: is CAP_SYS_NICE in the effective set (`CapEff:` in hex)?"""
    for line in proc_status.splitlines():
        if line.startswith("CapEff:"):
            try:
                return bool(int(line.split()[1], 16) >> CAP_SYS_NICE & 1)
            except (IndexError, ValueError):
                return False
    return False


def can_restore() -> bool:
    """May this process move a thread from SCHED_IDLE back to the normal policy at its
    current nice value? With CAP_SYS_NICE, or an RLIMIT_NICE that allows that nice value
    (the kernel treats leaving SCHED_IDLE as lowering the nice value from 20)."""
    try:
        with open("/proc/self/status") as f:
            if has_cap_sys_nice(f.read()):
                return True
    except OSError:
        return False
    import resource  # noqa: PLC0415  (only the supervisor gets here)

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    needed = 20 - os.getpriority(os.PRIO_PROCESS, 0)
    return soft == resource.RLIM_INFINITY or soft >= needed


def set_normal(tid: int = 0) -> bool:
    """One thread back under SCHED_OTHER (its nice value is kept); False if refused or gone."""
    try:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    except OSError:
        return False
    return True


def set_process_normal(pid: int) -> tuple[int, int]:
    """Every thread of a process back under SCHED_OTHER: (moved, refused)."""
    return _move_threads(pid, set_normal)


def _move_threads(pid: int, move: Callable[[int], bool]) -> tuple[int, int]:
    """`move` every thread of `pid`: (moved, refused; a thread that ended meanwhile counts as
    neither). Listed twice: a thread created while the first pass ran inherits the policy of
    the thread that created it, which may not have been moved yet."""
    moved: set[int] = set()
    refused: set[int] = set()
    for _ in range(2):
        with contextlib.suppress(OSError):
            for name in os.listdir(f"/proc/{pid}/task"):
                tid = int(name)
                if tid in moved:
                    continue
                if move(tid):
                    moved.add(tid)
                    refused.discard(tid)
                elif os.path.exists(f"/proc/{pid}/task/{tid}"):
                    refused.add(tid)
    return len(moved), len(refused)


def idle_threads(pid: int) -> int:
    """How many threads of `pid` are under SCHED_IDLE (0 if it is gone)."""
    try:
        return sum(is_idle(int(tid)) for tid in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def is_idle(tid: int = 0) -> bool:
    policy = getattr(os, "SCHED_IDLE", None)
    try:
        return policy is not None and os.sched_getscheduler(tid) == policy
    except OSError:
        return False


def parse_some_avg10(text: str) -> float | None:
    """`some avg10=1.23 avg60=... total=...` (the first line of a PSI file) -> 1.23."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "some":
            for field in fields[1:]:
                key, _, value = field.partition("=")
                if key == "avg10":
                    try:
                        return float(value)
                    except ValueError:
                        return None
    return None


def own_cgroup_dir(proc_cgroup: str) -> Path | None:
    """This process's cgroup v2 directory, from /proc/self/cgroup's `0::/path` line."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    return None


def pressure() -> float | None:
    """The highest PSI `some avg10` of this process's cgroup and of the machine; None if
    neither can be read (no PSI in this kernel, or no /proc)."""
    files = [Path("/proc/pressure/cpu")]
    try:
        group = own_cgroup_dir(Path("/proc/self/cgroup").read_text())
    except OSError:
        group = None
    if group is not None:
        files.append(group / "cpu.pressure")
    readings = []
    for path in files:
        try:
            value = parse_some_avg10(path.read_text())
        except OSError:
            continue
        if value is not None:
            readings.append(value)
    return max(readings) if readings else None
