"""The supervisor's settings: typed, frozen, with units in the names. Only the CLI builds them."""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from meshctl.drain.policy import DrainPolicy
from meshctl.manager.restarts import RestartPolicy

BASE_ID_RANGE = 100_000


def default_base_id(state_dir: Path) -> int:
    """A base id derived from the state dir, so that supervisors on one host with different
    state dirs do not share Envoy's /dev/shm segment, while two supervisors sharing one state
    dir (the two proxy slots of a pod) agree on it."""
    return 1 + zlib.crc32(str(state_dir.resolve()).encode()) % BASE_ID_RANGE


class InitPriority(enum.StrEnum):
    """How an upgrade's new generation initializes (see `upgrade.init_scheduling`)."""

    AUTO = "auto"
    IDLE = "idle"
    NORMAL = "normal"


@dataclass(frozen=True)
class SupervisorSettings:
    state_dir: Path
    """Where the lock, state file, control socket, hot-restart sockets and logs live."""
    binary: Path
    """The Envoy binary of the first generation."""
    config: Path
    """The Envoy config of the first generation."""
    base_id: int
    """Envoy's --base-id, shared by every generation of this supervisor."""
    drain: DrainPolicy = field(default_factory=DrainPolicy)
    concurrency: int = 2
    """Envoy worker threads; constant across generations (see `meshctl.envoy.argv`)."""
    ready_timeout_s: float = 60.0
    """How long a generation may take to reach LIVE before it counts as failed."""
    tick_s: float = 0.1
    """The main loop's period when nothing wakes it earlier."""
    idle_tick_s: float = 0.5
    """The period in steady state (RUNNING, IDLE), when only sampling is due: signals, child
    exits and control requests wake the loop at once whatever the period."""
    extra_args: tuple[str, ...] = ()
    """Extra Envoy arguments, after `--` on the command line."""
    init_priority: InitPriority = InitPriority.AUTO
    """How an upgrade's new generation initializes (`upgrade.init_scheduling`): `auto`
    (SCHED_IDLE until LIVE where the supervisor can restore it and the CPU is not saturated),
    `idle` (the same, whatever the CPU pressure) or `normal`."""
    keeper: Path | None = None
    """dumb-init between the supervisor and each Envoy, so that Envoy (which dies with its
    parent) survives a supervisor crash; None spawns Envoy directly."""
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    """The supervisor's own health and metrics port (like Istio's 15021); None: off."""
    slot: str | None = None
    """Pod mode: this supervisor's proxy slot (a or b); None on a host."""
    pod_dir: Path | None = None
    """Pod mode: the dir both slots share (ledger, hot-restart sockets); state_dir is inside."""
    restarts: RestartPolicy = field(default_factory=RestartPolicy)
    """Restarts of an Envoy that died on its own, and when to give up."""
    hold_sockets: bool = True
    """Hold duplicates of the live generation's listening sockets, so that a crash refuses
    no connection (`meshctl.manager.holding`)."""
