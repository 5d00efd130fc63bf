"""The record of one upgrade, from request to result: what status shows and history keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from meshctl import cpu
from meshctl.drain.policy import DrainPolicy
from meshctl.drain.window import DrainWindow
from meshctl.manager.settings import InitPriority
from meshctl.manager.snapshot import UpgradeRecord
from meshctl.manager.xdsguard import GateCheck


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
    replaced the wedged old one, see Trap 1 in docs/traps.md) or failed."""
    init_scheduling: str = "normal"
    """How the new generation initialized: `idle until LIVE (...)` or `normal (why not)`."""
    events: list[tuple[float, str]] = field(default_factory=list)
    window: DrainWindow | None = None
    connections: int | None = None
    gate: GateCheck | None = None
    """An xDS-driven config: the gate that holds the new generation short of LIVE until it has
    what its parent had (`meshctl.manager.xdsguard`)."""

    def event(self, now: float, name: str) -> None:
        self.events.append((round(now - self.requested_mono, 3), name))

    def to_json(self, now: float) -> UpgradeRecord:
        out: UpgradeRecord = {
            "id": self.id, "reason": self.reason, "result": self.result, "error": self.error,
            "from_epoch": self.from_epoch, "to_epoch": self.to_epoch,
            "from_pid": self.from_pid, "to_pid": self.to_pid,
            "from_version": self.from_version, "to_version": self.to_version,
            "binary": str(self.binary), "config": str(self.config),
            "requested_at": self.requested_wall,
            "live_after_s": self.live_after_s, "drain_s": self.drain_s,
            "total_s": self.total_s, "drain_end": self.drain_end,
            "forced_closes": self.forced_closes, "recovery": self.recovery,
            "ready_timeout_s": self.ready_timeout_s, "init_scheduling": self.init_scheduling,
            "drain_policy": {
                "drain_min_s": self.drain.drain_min_s, "drain_max_s": self.drain.drain_max_s,
                "strategy": str(self.drain.strategy),
            },
            "events": [{"t_s": t, "event": name} for t, name in self.events],
            "xds": self.gate.to_json() if self.gate is not None else None,
            # Connection readings taken, and skipped while the old generation visibly served.
            "drain_readings": (self.window.readings.to_json() if self.window is not None
                               else {"taken": 0, "skipped": 0}),
        }
        if self.window is not None and self.result == "in_progress":
            out["drain"] = {
                "connections": self.connections,
                "elapsed_s": round(self.window.elapsed(now), 3),
                "time_left_s": round(self.window.time_left(now), 3),
            }
        return out


def init_scheduling(mode: InitPriority, can_restore: bool,
                    pressure: float | None) -> tuple[bool, str]:
    """Whether a new generation initializes under SCHED_IDLE, and the words for the record.

    `mode` is the supervisor's --init-priority. Only where the supervisor can move it back at
    LIVE (else it would serve at idle priority), and in `auto` not on a saturated CPU, where
    an idle Envoy could take minutes to initialize."""
    if mode is InitPriority.NORMAL:
        return False, "normal (--init-priority normal)"
    if not can_restore:
        return False, "normal (no CAP_SYS_NICE to restore it at LIVE)"
    if mode is InitPriority.IDLE:
        return True, "idle until LIVE (--init-priority idle)"
    if pressure is None:
        return False, "normal (CPU pressure unknown)"
    if pressure >= cpu.SATURATED_PCT:
        return False, f"normal (CPU pressure {pressure:g} %)"
    return True, f"idle until LIVE (CPU pressure {pressure:g} %)"
