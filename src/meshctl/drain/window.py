"""The drain window's decision, as a pure function of time and open connections."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from meshctl.drain.activity import ActivityGate
from meshctl.drain.policy import DrainPolicy


class Verdict(enum.Enum):
    WAIT = "wait"
    """Keep draining."""
    IDLE = "idle"
    """No client connection left and the minimum has passed: end now, nothing is lost."""
    DEADLINE = "deadline"
    """drain_max_s reached: end now; connections still open are forced closes."""


@dataclass
class DrainWindow:
    policy: DrainPolicy
    started_at: float
    """Monotonic seconds when draining began (the new generation went LIVE)."""
    idle_samples: int = 2
    """Consecutive samples that must read 0 before the window calls the generation idle:
    one reading of the kernel's TCP table can miss a socket when the table changes while it
    is read (see `meshctl.drain.connections`), and ending a drain on a miss would cut a live
    connection. At the supervisor's 100 ms tick this costs 0.1 s."""
    readings: ActivityGate = field(default_factory=ActivityGate)
    """This drain's looks before each connection reading: a generation still visibly
    serving is not read (`meshctl.drain.activity`); how many were taken and skipped."""
    _zeros: int = field(default=0, init=False, repr=False)

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started_at)

    def time_left(self, now: float) -> float:
        return max(0.0, self.policy.drain_max_s - self.elapsed(now))

    def first_useful_reading(self, interval_s: float) -> float:
        """The earliest (monotonic) time a connection reading can help end the window: the
        `idle_samples` zero readings in a row must reach drain_min_s, so readings earlier than
        drain_min_s - (idle_samples - 1) * interval_s cannot end it. Each reading walks the
        kernel's TCP table (milliseconds of CPU), right when the new generation takes the
        clients: skipping the useless ones keeps that CPU for it."""
        return self.started_at + max(0.0, self.policy.drain_min_s
                                     - (self.idle_samples - 1) * interval_s)

    def decide(self, now: float, connections: int | None) -> Verdict:
        """`connections` is None when it could not be read; we then wait for the deadline
        rather than guess the generation is idle."""
        elapsed = self.elapsed(now)
        if elapsed >= self.policy.drain_max_s:
            return Verdict.DEADLINE
        self._zeros = self._zeros + 1 if connections == 0 else 0
        if self._zeros >= self.idle_samples and elapsed >= self.policy.drain_min_s:
            return Verdict.IDLE
        return Verdict.WAIT
