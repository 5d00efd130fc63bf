"""Time, injectable: every deadline in meshctl is measured on a Clock so tests can drive it."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards; only differences mean anything."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, for timestamps shown to people and written to state."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to; for unit tests of deadlines and windows."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_start - start

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        self._now += seconds


class Deadline:
    """A point on a clock; `remaining()` and `expired()` read it, nothing sleeps."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self._clock = clock
        self._at = clock.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._at - self._clock.monotonic())

    def expired(self) -> bool:
        return self._clock.monotonic() >= self._at
