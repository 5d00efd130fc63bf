"""Adoption after a supervisor crash: what the state file says ran, and what still runs.

On a host each Envoy runs under its keeper (dumb-init), so a supervisor that dies (SIGKILL, a
crash) leaves its generations serving. The next supervisor on the same state dir reads the
state file and adopts every recorded generation whose pid and start time still match
(`ChildProcess.adopt`, so a reused pid is never taken for Envoy); the supervisor then resumes
(the newest serves, an older one drains again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl import errors
from meshctl.clock import Clock
from meshctl.envoy.admin import AdminClient
from meshctl.manager.generation import Generation
from meshctl.manager.process import ChildProcess
from meshctl.manager.snapshot import UpgradeRecord
from meshctl.manager.state import HISTORY_KEEP, StateDir

log = logging.getLogger("meshctl.manager.supervisor")


@dataclass
class Previous:
    """What a previous supervisor left: its history and the generations still running."""

    history: list[UpgradeRecord] = field(default_factory=list)
    upgrade_counter: int = 0
    adopted: list[Generation] = field(default_factory=list)
    """Sorted by epoch."""


def load(state: StateDir, base_id: int, clock: Clock) -> Previous | None:
    """The state file's history and adopted generations; None without a state file. Raises
    Busy when a running generation was started with another base id."""
    previous = state.load()
    if previous is None:
        return None
    adopted: list[Generation] = []
    for rec in previous.get("generations") or []:
        gen = adopt(rec, state, clock)
        if gen is not None:
            adopted.append(gen)
    if adopted and previous.get("base_id") != base_id:
        raise errors.Busy(
            f"Envoy epoch {adopted[-1].epoch} (pid {adopted[-1].pid}) from a previous "
            f"supervisor runs with --base-id {previous.get('base_id')}; start meshctl with "
            f"that base id to adopt it, or stop it first"
        )
    return Previous(history=list(previous.get("history", []))[-HISTORY_KEEP:],
                    upgrade_counter=int(previous.get("upgrade_counter", 0)),
                    adopted=sorted(adopted, key=lambda g: g.epoch))


def adopt(rec: dict[str, Any], state: StateDir, clock: Clock) -> Generation | None:
    try:
        keeper_pid = rec.get("keeper_pid")
        process = ChildProcess.adopt(
            pid=int(keeper_pid or rec["pid"]),
            create_time=float(rec.get("keeper_create_time") or rec["create_time"]),
            envoy_pid=int(rec["pid"]), envoy_create_time=float(rec["create_time"]),
            keeper=keeper_pid is not None,
        )
        epoch = int(rec["epoch"])
    except (KeyError, TypeError, ValueError):
        log.warning("ignoring a malformed generation record in the state file: %r", rec)
        return None
    if process is None:
        return None
    gen = Generation(
        epoch=epoch, binary=Path(rec["binary"]), config=Path(rec["config"]),
        process=process, admin=AdminClient(state.admin_address_file(epoch), 1.0),
        log_path=Path(rec.get("log") or state.log_file(epoch)),
        started_mono=clock.monotonic(), started_wall=float(rec.get("started_at") or 0),
        version=rec.get("version"),
        hot_restart_version=rec.get("hot_restart_version"),
        listener_ports=frozenset(int(p) for p in rec.get("listener_ports") or []),
        xds_driven=bool(rec.get("xds_driven")),
    )
    if rec.get("live_at") is not None or rec.get("role") in ("live", "draining"):
        # It served: ended with SIGTERM and the grace like any served generation, never
        # with the SIGKILL kept for one that never was LIVE (Stopper.start(ask=False)).
        gen.live_mono = clock.monotonic()
        gen.live_wall = float(rec.get("live_at") or 0) or None
    log.warning("epoch %d: adopted running Envoy pid %d from a previous supervisor",
                epoch, gen.pid)
    return gen
