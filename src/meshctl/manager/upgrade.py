"""The record of one upgrade, from request to result: what status shows and history keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl.drain.policy import DrainPolicy
from meshctl.drain.window import DrainWindow


@dataclass
class Upgrade:
    """One upgrade, from request to result. Serialised into status and the state history."""

    id: str
    reason: str
    from_epoch: int
    to_epoch: int
    binary: Path
    config: Path
    drain: DrainPolicy
    requested_wall: float
    requested_mono: float
    from_pid: int
    from_version: str | None
    to_pid: int | None = None
    to_version: str | None = None
    result: str = "in_progress"
    """in_progress, succeeded, rolled_back or aborted."""
    error: str | None = None
    drain_end: str | None = None
    """idle (ended early), deadline (forced), envoy (Envoy's own timer) or exited (crashed)."""
    forced_closes: int = 0
    live_after_s: float | None = None
    drain_s: float | None = None
    total_s: float | None = None
    ready_timeout_s: float = 60.0
    """The new generation must be LIVE within this, or the upgrade is rolled back."""
    recovery: str | None = None
    """After a rollback: not_needed, recovered (a generation on the old binary and config
    replaced the wedged old one, see Trap 1) or failed."""
    events: list[tuple[float, str]] = field(default_factory=list)
    window: DrainWindow | None = None
    connections: int | None = None

    def event(self, now: float, name: str) -> None:
        self.events.append((round(now - self.requested_mono, 3), name))

    def to_json(self, now: float) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "reason": self.reason, "result": self.result, "error": self.error,
            "from_epoch": self.from_epoch, "to_epoch": self.to_epoch,
            "from_pid": self.from_pid, "to_pid": self.to_pid,
            "from_version": self.from_version, "to_version": self.to_version,
            "binary": str(self.binary), "config": str(self.config),
            "requested_at": self.requested_wall,
            "live_after_s": self.live_after_s, "drain_s": self.drain_s,
            "total_s": self.total_s, "drain_end": self.drain_end,
            "forced_closes": self.forced_closes, "recovery": self.recovery,
            "ready_timeout_s": self.ready_timeout_s,
            "drain_policy": {
                "drain_min_s": self.drain.drain_min_s, "drain_max_s": self.drain.drain_max_s,
                "strategy": str(self.drain.strategy),
            },
            "events": [{"t_s": t, "event": name} for t, name in self.events],
        }
        if self.window is not None and self.result == "in_progress":
            out["drain"] = {
                "connections": self.connections,
                "elapsed_s": round(self.window.elapsed(now), 3),
                "time_left_s": round(self.window.time_left(now), 3),
            }
        return out
