"""CPU scheduling policy: work that may wait yields to the proxy that serves.

Linux's SCHED_IDLE policy runs a thread only when no ordinary thread wants the CPU, and a
waking ordinary thread always preempts it. Moving a thread *to* SCHED_IDLE needs no privilege
(only the same user); moving it back needs CAP_SYS_NICE or an RLIMIT_NICE that few containers
grant, so it is only ever used for work that stays in the background until it ends: the
client commands (`meshctl.cli.priority`) and an old generation on its way out
(`ChildProcess.yield_cpu`). The policy is per thread and inherited by threads and children
created afterwards.
"""

from __future__ import annotations

import contextlib
import os


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
    """Every thread of a process under SCHED_IDLE. Returns how many threads were moved.

    Listed twice: a thread created while the first pass ran inherits the policy of the thread
    that created it, which may not have been moved yet."""
    moved: set[int] = set()
    for _ in range(2):
        with contextlib.suppress(OSError):
            for name in os.listdir(f"/proc/{pid}/task"):
                tid = int(name)
                if tid not in moved and set_idle(tid):
                    moved.add(tid)
    return len(moved)


def is_idle(tid: int = 0) -> bool:
    policy = getattr(os, "SCHED_IDLE", None)
    try:
        return policy is not None and os.sched_getscheduler(tid) == policy
    except OSError:
        return False
