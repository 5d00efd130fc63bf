"""What the CLI asks of a running supervisor: status, upgrade (with pre-flight), stop.

These run in the CLI's process. Pre-flight checks run the new Envoy binary here, before the
supervisor is asked for anything, so that a bad binary or config changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

from meshctl import errors
from meshctl.envoy import xds
from meshctl.envoy.admin import AdminClient, AdminUnavailable
from meshctl.envoy.binary import BinaryInfo, check_executable, probe_binary, validate_config
from meshctl.exitcodes import ExitCode
from meshctl.manager.control import call
from meshctl.manager.phase import Phase
from meshctl.manager.snapshot import GenerationJSON, StatusSnapshot, UpgradeRecord
from meshctl.manager.state import StateDir
from meshctl.trust import check_trusted

Progress = Callable[[Mapping[str, Any]], None]
POLL_S = 0.2


def client(state_dir: Path) -> StateDir:
    """The state dir of a client command, checked to be ours (`StateDir.check_client`); the
    control call then checks that the server runs as our user too."""
    sd = StateDir(state_dir)
    sd.check_client()
    return sd


def status(state_dir: Path) -> StatusSnapshot:
    snap = call(client(state_dir).control_socket, "status")
    return cast(StatusSnapshot, snap)  # the supervisor's own `_status`, as JSON


def preflight(binary: Path, config: Path, live: GenerationJSON) -> dict[str, str]:
    """The new binary runs, accepts the new config, and speaks the running one's hot-restart
    version. Raises PreflightFailed (or BadInput) with the reason; starts nothing.

    The running side is what the live generation said through its admin API at LIVE (the
    status carries it): the process, not the file, which may have been replaced since; and
    two runs of Envoy fewer (about 0.15 CPU-s, taken from the proxy's own CPU in a sidecar).
    Only a supervisor that has not read it (adopted from an older state file) has the old
    binary probed."""
    new = probe_binary(binary)
    old = _running(live)
    if new.hot_restart_version != old.hot_restart_version:
        raise errors.PreflightFailed(
            f"hot-restart version mismatch: running {old.version} speaks "
            f"{old.hot_restart_version}, new {new.version} speaks {new.hot_restart_version}; "
            f"a hot restart between them is impossible"
        )
    validate_config(binary, config)
    return {"version": new.version, "hot_restart_version": new.hot_restart_version}


def control_plane_preflight(sd: StateDir, live: GenerationJSON) -> None:
    """An xDS-driven live generation disconnected from its control plane: a new one would
    get nothing (the gate would hold it until --ready-timeout-s, then roll it back). Read
    fresh from the live generation's admin API; when that API is gone (a failed upgrade
    closed it), nothing is refused here: the gate still holds an incomplete generation."""
    try:
        health = xds.read_health(AdminClient(sd.admin_address_file(int(live["epoch"]))))
    except (AdminUnavailable, ValueError):
        return  # unknown (its admin API closed by a failed upgrade): the gate still guards
    if health.connected is False:
        raise errors.PreflightFailed(
            f"epoch {live['epoch']} is disconnected from its control plane "
            f"(control_plane.connected_state 0): a new generation would get no listeners; "
            f"fix the control plane, or --force to try (it is held until complete)")


def _running(live: GenerationJSON) -> BinaryInfo:
    binary = Path(live["binary"])
    version, hot = live.get("version"), live.get("hot_restart_version")
    if isinstance(version, str) and isinstance(hot, str) and version and hot:
        return BinaryInfo(path=binary, version=version, hot_restart_version=hot)
    return probe_binary(check_trusted(binary, "running Envoy binary"))


def upgrade(state_dir: Path, *, envoy: str | None, config: Path | None, wait: bool,
            timeout_s: float, run_preflight: bool, drain: Mapping[str, Any],
            progress: Progress | None = None, force: bool = False) -> UpgradeRecord:
    sd = client(state_dir)
    current = status(state_dir)
    live = current["live"]
    if Phase(current["phase"]) is not Phase.RUNNING or live is None:
        upgrading = current["upgrade"]
        raise errors.Busy(
            f"upgrade refused: the supervisor is {current['phase']}"
            + (f" (upgrade {upgrading['id']} in progress)" if upgrading else "")
        )
    binary = check_executable(Path(envoy).expanduser()) if envoy else Path(live["binary"])
    if config is not None:
        if not config.is_file():
            raise errors.BadInput(f"Envoy config not found: {config}")
        config = config.absolute()
    new_config = config or Path(live["config"])
    # Run (pre-flight) and handed to a root supervisor: nothing another user can change.
    check_trusted(binary, "Envoy binary")
    check_trusted(new_config, "Envoy config")
    if live.get("xds_driven") and not force:
        control_plane_preflight(sd, live)
    if run_preflight:
        preflight(binary, new_config, live)
    reply = call(sd.control_socket, "upgrade", binary=str(binary.absolute()),
                 config=str(new_config), **drain)
    record = cast(UpgradeRecord, reply["upgrade"])
    if not wait:
        return record
    return wait_for_upgrade(sd, record["id"], timeout_s, progress)


def wait_for_upgrade(sd: StateDir, upgrade_id: str, timeout_s: float,
                     progress: Progress | None) -> UpgradeRecord:
    deadline = time.monotonic() + timeout_s
    while True:
        snap = call(sd.control_socket, "status")
        current, last = snap.get("upgrade"), snap.get("last_upgrade")
        if current and current.get("id") == upgrade_id:
            if progress is not None:
                progress({**current, "phase": snap.get("phase")})
        elif last and last.get("id") == upgrade_id:
            return cast(UpgradeRecord, last)
        else:
            raise errors.MeshctlError(f"upgrade {upgrade_id} vanished from the supervisor's "
                                      f"status (was it restarted?)")
        if time.monotonic() >= deadline:
            raise errors.TimedOut(f"upgrade {upgrade_id} not finished after {timeout_s:g}s; "
                                  f"it goes on: see `meshctl status`")
        time.sleep(POLL_S)


def upgrade_exit_code(record: Mapping[str, Any], *, waited: bool) -> ExitCode:
    if not waited:
        return ExitCode.OK
    result = record.get("result")
    if result == "succeeded":
        return ExitCode.OK
    if result == "rolled_back":
        return ExitCode.ROLLED_BACK
    return ExitCode.FAILED


def stop(state_dir: Path, *, graceful: bool, wait: bool, timeout_s: float) -> None:
    sd = client(state_dir)
    snap = call(sd.control_socket, "status")
    call(sd.control_socket, "stop", graceful=graceful)
    if not wait:
        return
    pid = int(snap["supervisor_pid"])
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            raise errors.TimedOut(f"supervisor pid {pid} still running after {timeout_s:g}s")
        time.sleep(POLL_S)


def _alive(pid: int) -> bool:
    import psutil  # noqa: PLC0415

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
