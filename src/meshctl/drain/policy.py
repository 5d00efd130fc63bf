"""Drain settings, shared by upgrades (old generation) and shutdown (the live generation)."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any


class DrainStrategy(enum.StrEnum):
    IMMEDIATE = "immediate"
    """Envoy asks every connection to close at its next chance (Connection: close, GOAWAY)."""
    GRADUAL = "gradual"
    """Envoy asks a growing share of connections to close over its drain time."""


@dataclass(frozen=True)
class DrainPolicy:
    drain_min_s: float = 1.0
    """The window never ends before this, even when the old generation looks idle: a client may
    have just been accepted, or be about to send on a connection we saw as idle."""
    drain_max_s: float = 45.0
    """The window always ends by this: connections still open are closed and counted as forced
    closes. Keep it below the pod's terminationGracePeriodSeconds minus stop_grace_s."""
    strategy: DrainStrategy = DrainStrategy.IMMEDIATE
    """Envoy's --drain-strategy for the draining generation."""
    stop_grace_s: float = 5.0
    """After SIGTERM, how long a generation gets to exit before SIGKILL."""

    def __post_init__(self) -> None:
        if not (self.drain_min_s >= 0 and self.drain_max_s > 0 and self.stop_grace_s >= 0):
            raise ValueError("drain times must be positive")  # NaN fails here too
        if not all(math.isfinite(t) for t in (self.drain_min_s, self.drain_max_s,
                                               self.stop_grace_s)):
            raise ValueError("drain times must be finite numbers of seconds")
        if self.drain_min_s > self.drain_max_s:
            raise ValueError(
                f"drain_min_s ({self.drain_min_s:g}) is above drain_max_s ({self.drain_max_s:g})"
            )

    @property
    def envoy_drain_time_s(self) -> int:
        """Envoy's --drain-time-s. `immediate` asks every connection to close at once whatever
        it is. `gradual` asks each response's connection to close with a probability that
        reaches 1 at the drain time: set to half the window, so that a connection asked last
        still has the other half for its request in flight before the deadline cuts it (with
        the whole window, 2 s requests under drain_max_s 6 were cut: bench/proof.py, slow)."""
        if self.strategy is DrainStrategy.GRADUAL:
            return max(1, math.floor(self.drain_max_s / 2))
        return max(1, math.ceil(self.drain_max_s))

    @property
    def envoy_parent_shutdown_time_s(self) -> int:
        """Envoy's --parent-shutdown-time-s, kept past our own deadline plus the stop grace, so
        that meshctl, not Envoy's timer, ends the window (Envoy's timer stays as a backstop)."""
        return math.ceil(self.drain_max_s + self.stop_grace_s) + 5

    @property
    def shutdown_budget_s(self) -> float:
        """The longest a graceful stop of the supervisor can take: drain, then SIGTERM, grace,
        SIGKILL. The pod's terminationGracePeriodSeconds must be larger."""
        return self.drain_max_s + 2 * self.stop_grace_s

    def with_overrides(self, values: Mapping[str, Any]) -> DrainPolicy:
        """A copy with the given fields replaced (a settings file, then CLI flags). Unknown
        names, wrong types and inconsistent values raise ValueError, naming the field."""
        known = {f.name for f in fields(self)}
        unknown = sorted(str(k) for k in set(values) - known)
        if unknown:
            raise ValueError(f"unknown drain setting(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        changes: dict[str, Any] = {}
        for name, raw in values.items():
            if raw is None:
                continue
            if name == "strategy":
                try:
                    changes[name] = DrainStrategy(str(raw))
                except ValueError:
                    raise ValueError(f"strategy must be one of "
                                     f"{', '.join(s.value for s in DrainStrategy)}, "
                                     f"not {raw!r}") from None
            elif isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"{name} must be a number of seconds, not {raw!r}")
            else:
                changes[name] = float(raw)
        return replace(self, **changes)
