"""One Envoy generation: a restart epoch, its process, its admin API, its timings."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from meshctl.envoy.admin import AdminClient
from meshctl.envoy.binary import parse_version
from meshctl.manager.process import ChildProcess
from meshctl.manager.snapshot import GenerationJSON


class Role(enum.StrEnum):
    STARTING = "starting"
    """Spawned, not LIVE yet."""
    LIVE = "live"
    """Serving: the generation new connections go to."""
    DRAINING = "draining"
    """Replaced by a newer generation, finishing its connections."""
    STOPPING = "stopping"
    """Being ended by the supervisor (SIGTERM, grace, SIGKILL)."""
    EXITED = "exited"


@dataclass
class Generation:
    epoch: int
    binary: Path
    config: Path
    process: ChildProcess
    admin: AdminClient
    log_path: Path
    started_mono: float
    started_wall: float
    role: Role = Role.STARTING
    live_mono: float | None = None
    live_wall: float | None = None
    version: str | None = None
    hot_restart_version: str | None = None
    """Read from its admin API at LIVE; spares the pre-flight and the recovery a run of the
    binary."""
    listener_ports: frozenset[int] = field(default_factory=frozenset)
    xds_driven: bool = False
    """Its config takes resources from a control plane (`meshctl.envoy.xds.is_xds_driven`)."""
    connections: int | None = None
    """Last sampled count of open client connections on its listener ports."""

    @property
    def pid(self) -> int:
        """Envoy's own pid (not its keeper's)."""
        return self.process.envoy_pid

    @property
    def alive(self) -> bool:
        return self.process.alive

    def set_version(self, full: str) -> None:
        self.version = parse_version(full) or full

    def to_json(self) -> GenerationJSON:
        proc = self.process.to_json()
        return {
            "epoch": self.epoch,
            "pid": proc["pid"], "create_time": proc["create_time"],
            "keeper_pid": proc["keeper_pid"], "keeper_create_time": proc["keeper_create_time"],
            "adopted": proc["adopted"],
            "role": str(self.role),
            "binary": str(self.binary),
            "config": str(self.config),
            "version": self.version,
            "hot_restart_version": self.hot_restart_version,
            "started_at": self.started_wall,
            "listener_ports": sorted(self.listener_ports),
            "xds_driven": self.xds_driven,
            "connections": self.connections,
            "log": str(self.log_path),
            "live_at": self.live_wall,
            "exit": None if self.alive else self.process.describe_exit(),
        }
