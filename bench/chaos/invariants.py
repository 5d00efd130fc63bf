"""The invariants checked after every step of a chaos run, one function each. Each returns what
it found wrong (an empty list when the invariant holds), never raises for a violation.

They are checked once the step has settled (the supervisor RUNNING, no upgrade in progress):
- one LIVE generation, alone;
- every listener port accepts a connection;
- `meshctl status` and the state file agree on the phase, the epoch and the live pid;
- no orphan: every process whose command line names the state dir (Envoy and its keeper
  carry `--socket-path STATE_DIR/hr/envoy`; a supervisor `--state-dir STATE_DIR`) is the
  supervisor or one of its generations;
- the supervisor's file descriptors do not grow from step to step;
- on disk, only the live generation's hot-restart sockets (and its parent's stand-in) and one
  shared-memory file; no parent socket of an older generation left behind;
- the live generation's parent socket, if any, answered (Trap 2);
- the live generation's admin API answers /ready LIVE (Trap 1 repaired).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import psutil

from meshctl.envoy.admin import AdminClient
from meshctl.manager.snapshot import StatusSnapshot

FD_SLACK = 3
"""Descriptors the supervisor may hold above its baseline at rest: the least of 10 readings
over half a second is taken, but a control connection or a netlink socket for a connection
count can span them all on a busy machine."""


def one_live_generation(snap: StatusSnapshot) -> list[str]:
    live = snap["live"]
    roles = [(g["epoch"], g["role"]) for g in snap["generations"]]
    problems = []
    if snap["phase"] != "running":
        problems.append(f"phase is {snap['phase']}, not running")
    if live is None or live["role"] != "live":
        problems.append(f"no live generation (live: {live and live['role']})")
    if [r for _, r in roles] != ["live"]:
        problems.append(f"generations are {roles}, not one live generation alone")
    return problems


def ports_accept(ports: Collection[int], timeout_s: float = 3.0) -> list[str]:
    problems = []
    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
                pass
        except OSError as exc:
            problems.append(f"port {port} does not accept: {exc}")
    return problems


def status_matches_state_file(snap: StatusSnapshot, state_file: Path) -> list[str]:
    try:
        state: dict[str, Any] = json.loads(state_file.read_text())
    except (OSError, ValueError) as exc:
        return [f"state file unreadable: {exc}"]
    problems = []
    for key in ("phase", "epoch", "supervisor_pid"):
        if state.get(key) != snap[key]:
            problems.append(f"{key}: status {snap[key]!r}, state file {state.get(key)!r}")
    live = snap["live"]
    saved = state.get("live") or {}
    if (live and live["pid"]) != saved.get("pid"):
        problems.append(f"live pid: status {live and live['pid']}, state file "
                        f"{saved.get('pid')}")
    return problems


def known_pids(snap: StatusSnapshot) -> set[int]:
    pids = {snap["supervisor_pid"]}
    for gen in snap["generations"]:
        pids.add(gen["pid"])
        if gen["keeper_pid"]:
            pids.add(gen["keeper_pid"])
    return pids


def no_orphans(snap: StatusSnapshot, state_dir: Path, ignore: Collection[int] = ()) -> list[str]:
    """`ignore`: the run's own client processes (none should be running at a check)."""
    marker = str(state_dir)
    known = known_pids(snap) | set(ignore)
    problems = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if marker not in cmdline or proc.info["pid"] in known:
            continue
        problems.append(f"orphan pid {proc.info['pid']} ({proc.info['name']}, "
                        f"{proc.info['status']}): {cmdline[:160]}")
    return problems


def resting_fds(pid: int, readings: int = 10, every_s: float = 0.05) -> int | None:
    """The supervisor's fds at rest: the least of a few readings (its loop opens short-lived
    ones now and then). None if it is gone."""
    counts = []
    for _ in range(readings):
        with contextlib.suppress(psutil.Error):
            counts.append(psutil.Process(pid).num_fds())
        time.sleep(every_s)
    return min(counts) if counts else None


def fds_steady(now: int | None, baseline: int | None, slack: int = FD_SLACK) -> list[str]:
    if now is None or baseline is None:
        return []
    if now > baseline + slack:
        return [f"supervisor fds grew: {baseline} after its first step, {now} now"]
    return []


def expected_socket_files(base_id: int, epoch: int) -> tuple[set[str], str]:
    """The live generation's hot-restart sockets, and its parent's (a stand-in may hold it)."""
    own = {f"envoy_{role}_{10 * base_id + epoch % 3}"
           for role in ("parent", "child", "udp_parent", "udp_child")}
    return own, f"envoy_parent_{10 * base_id + (epoch - 1) % 3}"


def no_leaked_files(snap: StatusSnapshot, state_dir: Path,
                    shm_dir: Path = Path("/dev/shm")) -> list[str]:
    live, base = snap["live"], snap["base_id"]
    if live is None:
        return []  # one_live_generation says so
    own, parent = expected_socket_files(base, live["epoch"])
    hr = state_dir / "hr"
    files = {p.name for p in hr.iterdir()} if hr.is_dir() else set()
    problems = []
    extra = files - own - {parent} - stale_parent_sockets(snap, state_dir)
    if extra:
        problems.append(f"hot-restart files beyond the live generation's (epoch "
                        f"{live['epoch']}, base id {base}): {sorted(extra)}")
    shm = sorted(p.name for p in shm_dir.glob(f"envoy_shared_memory_{10 * base}*"))
    if shm != [f"envoy_shared_memory_{10 * base}"]:
        problems.append(f"shared memory files: {shm}")
    admin = sorted(p.name for p in state_dir.glob("gen-*.admin"))
    if admin != [f"gen-{live['epoch']}.admin"]:
        problems.append(f"admin address files: {admin}")
    return problems


def stale_parent_sockets(snap: StatusSnapshot, state_dir: Path) -> set[str]:
    """Parent sockets in hr/ beyond the live generation's own parent: what a stand-in of a
    supervisor that was killed leaves (reported apart from other files: see
    docs/reliability.md, the chaos run)."""
    live = snap["live"]
    hr = state_dir / "hr"
    if live is None or not hr.is_dir():
        return set()
    own, parent = expected_socket_files(snap["base_id"], live["epoch"])
    return {p.name for p in hr.iterdir()
            if p.name.startswith("envoy_parent_") and p.name not in own | {parent}}


def no_stale_parent_socket(snap: StatusSnapshot, state_dir: Path) -> list[str]:
    stale = stale_parent_sockets(snap, state_dir)
    live = snap["live"]
    return ([f"parent socket(s) {sorted(stale)} beside live epoch {live and live['epoch']}'s "
             f"own"] if stale else [])


def live_parent_answered(snap: StatusSnapshot, state_dir: Path) -> list[str]:
    """The live generation's parent socket, when there is one, has a listener (its parent, or
    a stand-in): until its --parent-shutdown-time-s timer has fired, the live Envoy sends its
    parent stats requests and a Terminate there, and on ECONNREFUSED it retries ten times with
    its main thread blocked, then aborts (Trap 2). Probed with connect(), which sends nothing.
    (Once the timer has fired a dead socket is harmless: a supervisor killed long after an
    upgrade makes this report one that no longer matters.)"""
    live = snap["live"]
    if live is None:
        return []
    _, parent = expected_socket_files(snap["base_id"], live["epoch"])
    path = state_dir / "hr" / parent
    if live["epoch"] == 0 or not path.exists():
        return []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            return [f"nothing answers on live epoch {live['epoch']}'s parent socket {parent}: "
                    f"the live Envoy aborts at its next hot-restart message (Trap 2)"]
        except OSError as exc:
            return [f"live epoch {live['epoch']}'s parent socket {parent}: {exc}"]
    return []


def live_admin_ready(snap: StatusSnapshot, state_dir: Path) -> list[str]:
    """The live generation's admin API answers /ready LIVE, at the address it published: a
    failed upgrade must not leave it without one (Trap 1's second half), or readiness probes,
    the next upgrade's checks and a new supervisor's adoption all go blind."""
    live = snap["live"]
    if live is None:
        return []
    admin = AdminClient(state_dir / f"gen-{live['epoch']}.admin", timeout_s=2.0)
    if admin.is_ready():
        return []
    return [f"live epoch {live['epoch']}'s admin API does not answer /ready LIVE "
            f"(address {admin.address()})"]


def check_all(snap: StatusSnapshot, state_dir: Path, ports: Sequence[int], *,
              fds_now: int | None, fds_baseline: int | None) -> dict[str, list[str]]:
    """Every invariant by name; a name maps to [] when it holds."""
    return {
        "one_live_generation": one_live_generation(snap),
        "ports_accept": ports_accept(ports),
        "status_matches_state_file": status_matches_state_file(snap,
                                                               state_dir / "state.json"),
        "no_orphans": no_orphans(snap, state_dir),
        "fds_steady": fds_steady(fds_now, fds_baseline),
        "no_leaked_files": no_leaked_files(snap, state_dir),
        "no_stale_parent_socket": no_stale_parent_socket(snap, state_dir),
        "live_parent_answered": live_parent_answered(snap, state_dir),
        "live_admin_ready": live_admin_ready(snap, state_dir),
    }
