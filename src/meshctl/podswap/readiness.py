"""The pod's Ready condition through a swap: how long the pod was NotReady, how many times it
went from Ready to NotReady, and when, measured from the pod objects meshctl reads anyway (its
reads, its patches' answers, every event of its watch). Pure: pods in, a `ReadyWindow` out.

While the pod is NotReady its Services send it no new connection (its endpoints list it as not
ready), and every flip is an endpoint update pushed to every client of those Services: the
figures to keep small (docs/pod-slots.md, "Pod readiness during a swap").

Two clocks, both reported: `seen_s` is when meshctl saw a change (its monotonic clock, to the
millisecond; a watch event arrives within milliseconds of the write), from which the NotReady
seconds are summed; `recorded` is the condition's `lastTransitionTime` as the API server holds
it (written by the kubelet, to the second).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

from meshctl.clock import Clock


class ReadyTransitionJson(TypedDict):
    ready: bool
    """The Ready condition's status from this point on."""
    seen_s: float
    """When meshctl saw it, in seconds since the swap started."""
    seen_at: str
    """The same, as an RFC 3339 time (meshctl's clock)."""
    recorded: str | None
    """The condition's lastTransitionTime, as the API server holds it (to the second)."""


class NotReadyJson(TypedDict):
    """The pod's Ready condition through one swap (`meshctl upgrade --pod -o json`:
    `not_ready`; the rollout's per-pod results: `not_ready`)."""

    not_ready_s: float
    """Seconds the pod was NotReady between the swap's start and its end."""
    ready_flips: int
    """How many times it went from Ready to NotReady."""
    ready_at_start: bool | None
    ready_at_end: bool | None
    transitions: list[ReadyTransitionJson]


@dataclass(frozen=True)
class Transition:
    ready: bool
    seen_s: float
    """On the clock's monotonic scale."""
    seen_wall: float
    recorded: str | None


def ready_condition(pod: Mapping[str, Any]) -> tuple[bool, str | None] | None:
    """(status, lastTransitionTime) of the pod's Ready condition; None if it has none."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            recorded = condition.get("lastTransitionTime")
            return condition.get("status") == "True", str(recorded) if recorded else None
    return None


@dataclass
class ReadyWindow:
    """Feed it every pod object read during the swap (`observe`), then `to_json(end)`."""

    clock: Clock
    started_s: float = field(init=False)
    initial: bool | None = None
    transitions: list[Transition] = field(default_factory=list)
    _recorded: str | None = None

    def __post_init__(self) -> None:
        self.started_s = self.clock.monotonic()

    @property
    def ready(self) -> bool | None:
        """The last status seen (None: not seen yet)."""
        return self.transitions[-1].ready if self.transitions else self.initial

    def observe(self, pod: Mapping[str, Any]) -> None:
        condition = ready_condition(pod)
        if condition is None:
            return
        ready, recorded = condition
        if self.initial is None and not self.transitions:
            self.initial, self._recorded = ready, recorded
            return
        now, wall = self.clock.monotonic(), self.clock.wall()
        if ready == self.ready:
            if recorded is None or recorded == self._recorded:
                return
            # The same status with a newer transition time: a flip and back between two reads
            # (only when meshctl was not watching); the API server's record says it happened.
            self.transitions.append(Transition(not ready, now, wall, None))
        self.transitions.append(Transition(ready, now, wall, recorded))
        self._recorded = recorded

    def to_json(self, ended_s: float | None = None) -> NotReadyJson:
        """The window up to `ended_s` (the clock's monotonic seconds; None: now)."""
        end = self.clock.monotonic() if ended_s is None else ended_s
        not_ready = 0.0
        flips = 0
        ready, since = self.initial, self.started_s
        for t in self.transitions:
            if ready is False:
                not_ready += t.seen_s - since
            if ready is not False and not t.ready:
                flips += 1
            ready, since = t.ready, t.seen_s
        if ready is False:
            not_ready += max(0.0, end - since)
        return {
            "not_ready_s": round(not_ready, 3), "ready_flips": flips,
            "ready_at_start": self.initial, "ready_at_end": ready,
            "transitions": [{"ready": t.ready, "seen_s": round(t.seen_s - self.started_s, 3),
                             "seen_at": _iso(t.seen_wall), "recorded": t.recorded}
                            for t in self.transitions],
        }


def _iso(wall_s: float) -> str:
    return (datetime.fromtimestamp(wall_s, tz=UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))
