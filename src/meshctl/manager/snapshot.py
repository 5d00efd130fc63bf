"""What a supervisor publishes about itself: the status snapshot and the records in it, typed.

The same shapes cross three boundaries: the control socket (`meshctl status`, `meshctl upgrade
--wait`), the state file (read back after a supervisor crash), and JSON output (`-o json`, for
CI jobs). The JSON field names are a contract: they change only with a note in README.md.
`ready` decides, from a snapshot alone, what the health port answers (pure; unit-tested).
"""

from __future__ import annotations

from typing import Any, TypedDict

from meshctl.manager.phase import Phase


class DrainPolicyJSON(TypedDict):
    drain_min_s: float
    drain_max_s: float
    strategy: str


class SupervisorDrainJSON(DrainPolicyJSON):
    stop_grace_s: float


class DrainProgressJSON(TypedDict):
    connections: int | None
    elapsed_s: float
    time_left_s: float


class EventJSON(TypedDict):
    t_s: float
    event: str


class _UpgradeRequired(TypedDict):
    id: str
    result: str
    """in_progress, succeeded, rolled_back or aborted."""


class UpgradeRecord(_UpgradeRequired, total=False):
    """One upgrade (`Upgrade.to_json`); `drain` only while it is in progress."""

    reason: str
    error: str | None
    from_epoch: int
    to_epoch: int
    from_pid: int
    to_pid: int | None
    from_version: str | None
    to_version: str | None
    binary: str
    config: str
    requested_at: float
    live_after_s: float | None
    drain_s: float | None
    total_s: float | None
    drain_end: str | None
    forced_closes: int
    recovery: str | None
    ready_timeout_s: float
    init_scheduling: str
    drain_policy: DrainPolicyJSON
    events: list[EventJSON]
    drain_readings: dict[str, int]
    xds: dict[str, Any] | None
    drain: DrainProgressJSON
    client_scheduling: str
    """Added by the CLI to its own output (how it ran itself), never by the supervisor."""


class ProcessJSON(TypedDict):
    """One Envoy process and its keeper (`ChildProcess.to_json`): what adoption checks."""

    pid: int
    create_time: float | None
    keeper_pid: int | None
    keeper_create_time: float | None
    adopted: bool


class GenerationJSON(ProcessJSON):
    """One generation (`Generation.to_json`)."""

    epoch: int
    role: str
    binary: str
    config: str
    version: str | None
    hot_restart_version: str | None
    started_at: float
    listener_ports: list[int]
    xds_driven: bool
    connections: int | None
    log: str
    live_at: float | None
    exit: str | None


class CrashesJSON(TypedDict):
    total: int
    recent: int


class PodJSON(TypedDict):
    slot: str | None
    dir: str
    serving: bool


class HeldSocketsJSON(TypedDict):
    """The listening sockets the supervisor holds (`meshctl.manager.holding`)."""

    sockets: int
    """One per worker where Envoy uses reuse_port."""
    addresses: list[str]
    pending: int
    """Held for a generation restarted after a crash that has not asked for them yet."""
    given: int
    """Handed to restarted generations since the supervisor started."""


class StatusSnapshot(TypedDict):
    """`meshctl status -o json`, and what the control socket's `status` answers."""

    phase: str
    supervisor_pid: int
    state_dir: str
    base_id: int
    epoch: int | None
    live: GenerationJSON | None
    generations: list[GenerationJSON]
    upgrade: UpgradeRecord | None
    last_upgrade: UpgradeRecord | None
    upgrades: int
    failure: str | None
    crashes: CrashesJSON
    pod: PodJSON | None
    health: str | None
    xds: dict[str, Any] | None
    held_sockets: HeldSocketsJSON
    state_error: str | None
    """Why the state file could not be written (its last good content stays), or None."""
    drain_policy: SupervisorDrainJSON


class StateFile(StatusSnapshot, total=False):
    """The state file: the snapshot, plus what only a restarted supervisor needs."""

    schema: int
    history: list[UpgradeRecord]
    upgrade_counter: int


SERVING = frozenset({Phase.RUNNING, Phase.UPGRADING, Phase.DRAINING, Phase.ROLLING_BACK,
                     Phase.RECOVERING})
"""Phases in which a generation of this supervisor serves, when one is live."""


def ready(snap: StatusSnapshot | None) -> tuple[bool, str]:
    """What the health port answers (`/healthz/ready`), from the published snapshot alone: it
    runs on the health server's thread and must not touch the supervisor's state."""
    if not snap:
        return False, "starting"
    phase = Phase(snap["phase"])
    live = snap["live"]
    if phase in SERVING and live is not None and live["role"] == "live":
        return True, "ready"
    pod = snap["pod"]
    if phase in (Phase.HANDING_OVER, Phase.IDLE) and pod is not None and pod["serving"]:
        return True, "ready (the other slot serves)"
    return False, str(phase)
