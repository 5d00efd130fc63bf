"""When Envoy dies on its own in steady state: restart it, with backoff, until it crash-loops.

Pure policy on an injectable clock: the supervisor asks `next_delay()` after each crash and
gets a backoff, or None when the crashes in the window exceed the limit (give up, clearly).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from meshctl.clock import Clock


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5
    """Restarts allowed within `window_s`; one more crash and the supervisor gives up."""
    window_s: float = 120.0
    """The crash-loop window: crashes older than this are forgotten."""
    backoff_s: float = 0.5
    """The first restart's delay; doubled for each crash still in the window."""
    backoff_max_s: float = 10.0


class CrashLoop:
    def __init__(self, policy: RestartPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self._crashes: deque[float] = deque()
        self.total = 0

    def recent(self) -> int:
        cutoff = self.clock.monotonic() - self.policy.window_s
        while self._crashes and self._crashes[0] < cutoff:
            self._crashes.popleft()
        return len(self._crashes)

    def next_delay(self) -> float | None:
        """Record a crash now; the delay before the restart, or None: crash loop, give up."""
        self._crashes.append(self.clock.monotonic())
        self.total += 1
        n = self.recent()
        if n > self.policy.max_restarts:
            return None
        return float(min(self.policy.backoff_max_s, self.policy.backoff_s * 2.0 ** (n - 1)))
