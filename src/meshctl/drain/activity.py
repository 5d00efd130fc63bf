"""Is the draining generation visibly still serving? A cheap look before a costly reading.

A connection reading (`meshctl.drain.connections`) costs the supervisor milliseconds of CPU at
normal priority: the sock_diag dump walks the kernel's whole TCP hash table (262,144 buckets
per address family here, plus every TIME_WAIT entry). In the benchmark's upgrade storm one
reading took ~10 ms on the proxy's CPU while the live generation's workers waited 3-7 ms for
it (docs/latency.md), several times per drain. But a generation that used more than 8 % of a
core since the last look is handling traffic: it cannot be idle, and the reading could only
say "wait". The look is one read of /proc/<pid>/stat (psutil).

Skipping is always on the safe side: it can make the window end later, never earlier, and the
supervisor reads at the deadline regardless (`force`).
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

BUSY_SHARE = 0.08
"""Share of one core the draining generation must have used since the last look to count as
serving: 8 %, what Envoy spends on ~400 requests a second here (~200 us each, both hops).
A generation left with a few keep-alive clients near the end of a drain stays below it, so
the readings that end the window are taken as before; an idle Envoy's timers use well under
1 ms a second."""
MIN_BUSY_CPU_S = 0.02
"""Never less than this: 2 clock ticks at the usual USER_HZ of 100, the kernel's granularity
for a process's CPU time (one tick more or less is noise)."""


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of `pid` (every thread), or None if it cannot be read."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.Error, OSError):
        return None
    return float(times.user + times.system)


@dataclass
class ActivityGate:
    """One drain's looks: whether each due reading is taken, and how many were skipped."""

    busy_share: float = BUSY_SHARE
    last_cpu_s: float | None = None
    last_look: float | None = None
    taken: int = 0
    skipped: int = 0

    def allow(self, now: float, cpu_s: float | None, *, force: bool = False) -> bool:
        """Whether to take the reading that is due at `now` (monotonic seconds), given the
        generation's CPU seconds (None: unknown, never a reason to skip). `force`: the
        deadline, always read."""
        last_cpu, last_look = self.last_cpu_s, self.last_look
        self.last_cpu_s, self.last_look = cpu_s, now
        busy = (cpu_s is not None and last_cpu is not None and last_look is not None
                and cpu_s - last_cpu >= max(MIN_BUSY_CPU_S,
                                            self.busy_share * (now - last_look)))
        if busy and not force:
            self.skipped += 1
            return False
        self.taken += 1
        return True

    def to_json(self) -> dict[str, int]:
        return {"taken": self.taken, "skipped": self.skipped}
