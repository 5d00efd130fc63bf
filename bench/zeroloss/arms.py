"""The two ways to upgrade Envoy that every scenario compares, behind one interface (`Arm`):

- `MeshctlArm`: `python -m meshctl run` (the supervisor) and `python -m meshctl upgrade --wait
  -o json`, the hot restart; the upgrade record's `events` say when the new generation started,
  went LIVE, when the drain began and when the old generation was gone.
- `NaiveArm`: plain Envoy, and an upgrade is: SIGTERM the old one, wait for its exit, start the
  new one, wait until it is LIVE. When the new one fails (scenario 4), the naive operator starts
  the old binary and config again.

Both report an `UpgradeResult` with events on the same scale: seconds from the moment the
upgrade was requested (the supervisor's `requested_at`; for the naive arm, the SIGTERM), plus
`command`, when the operator's command started (the meshctl CLI runs its pre-flight checks
before it asks the supervisor anything).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from benchlib import PlainEnvoy, Supervisor, log, remove_shared_memory, server_info
from meshctl.manager.settings import default_base_id

CONCURRENCY = 2
"""Envoy worker threads in both arms (meshctl's default; plain Envoy is given the same)."""


@dataclass
class UpgradeResult:
    """One upgrade as an arm performed it."""

    label: str
    """What was asked (e.g. `1.39.3 -> 1.40.0`, `bad binary`)."""
    result: str
    """succeeded, rolled_back (the old version serves again), or failed."""
    requested_wall: float
    """Wall-clock time the events count from."""
    events: list[tuple[float, str]] = field(default_factory=list)
    """(seconds from `requested_wall`, event name), in order."""
    detail: dict[str, Any] = field(default_factory=dict)
    """The meshctl upgrade record, or the naive arm's timings."""

    @property
    def end_s(self) -> float:
        return max((t for t, _ in self.events), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "result": self.result,
                "requested_wall": self.requested_wall,
                "events": [{"t_s": round(t, 4), "event": e} for t, e in self.events],
                "detail": self.detail}


class Arm(Protocol):
    name: str

    def start(self, binary: Path, config: Path) -> None: ...

    def upgrade(self, label: str, binary: Path, config: Path, *,
                ready_timeout_s: float | None = None) -> UpgradeResult: ...

    def stop(self) -> None: ...

    def supervisor_pid(self) -> int | None: ...


class MeshctlArm:
    name = "meshctl"

    def __init__(self, root: Path, *, drain_min_s: float = 1.0, drain_max_s: float = 45.0,
                 run_args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.drain_min_s, self.drain_max_s = drain_min_s, drain_max_s
        self.run_args = run_args
        self.sup: Supervisor | None = None

    def start(self, binary: Path, config: Path) -> None:
        sup = Supervisor(self.root, binary, config, drain_min_s=self.drain_min_s,
                         drain_max_s=self.drain_max_s)
        sup.argv += ["--concurrency", str(CONCURRENCY), *self.run_args]
        self.sup = sup.start()

    def supervisor_pid(self) -> int | None:
        return None if self.sup is None or self.sup.proc is None else self.sup.proc.pid

    def upgrade(self, label: str, binary: Path, config: Path, *,
                ready_timeout_s: float | None = None) -> UpgradeResult:
        assert self.sup is not None
        argv = [sys.executable, "-m", "meshctl", "upgrade", "--state-dir",
                str(self.sup.state_dir), "--envoy", str(binary), "--config", str(config),
                "--wait", "--timeout", "300", "-o", "json"]
        if ready_timeout_s is not None:
            argv += ["--ready-timeout-s", f"{ready_timeout_s:g}"]
        command_wall = time.time()
        # The CLI and what it runs (the pre-flight Envoy invocations) are the only children
        # reaped meanwhile, so the change of RUSAGE_CHILDREN is their CPU.
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=330, check=False,
                              stdin=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        done_wall = time.time()
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        try:
            record: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            record = {}
        requested = float(record.get("requested_at") or command_wall)
        events = [(command_wall - requested, "command")]
        events += [(float(e["t_s"]), str(e["event"])) for e in record.get("events") or []]
        events.append((done_wall - requested, "command_done"))
        result = str(record.get("result") or "failed")
        detail = {"exit_code": done.returncode, "record": record,
                  "cli_wall_s": round(done_wall - command_wall, 3),
                  "cli_cpu_s": round(cpu, 3),
                  "stderr_tail": "\n".join(done.stderr.strip().splitlines()[-3:])}
        log(f"meshctl upgrade {label}: {result} (exit {done.returncode}) in "
            f"{done_wall - command_wall:.2f}s; events {record.get('events')}")
        return UpgradeResult(label=label, result=result, requested_wall=requested,
                             events=sorted(events), detail=detail)

    def stop(self) -> None:
        if self.sup is not None:
            self.sup.stop()


class NaiveArm:
    """Plain Envoy, stopped and started again for every upgrade (epoch 0 each time, so no hot
    restart): what a deployment without a hot-restart supervisor does."""

    name = "naive"

    def __init__(self, root: Path, admin_port: int, *, ready_timeout_s: float = 60.0) -> None:
        self.root = root
        self.base_id = default_base_id(root)
        self.ready_timeout_s = ready_timeout_s
        self.envoy: PlainEnvoy | None = None
        self.admin_port = admin_port
        self.starts = 0
        self.current: tuple[Path, Path] | None = None

    def _launch(self, binary: Path, config: Path) -> PlainEnvoy:
        # Each process is told its own label: the epoch header says which one served.
        envoy = PlainEnvoy(binary, config, self.base_id, self.root / f"envoy-{self.starts}.log",
                           label=str(self.starts),
                           extra_args=["--concurrency", str(CONCURRENCY)])
        self.starts += 1
        return envoy.start()

    def start(self, binary: Path, config: Path) -> None:
        self.envoy = self._launch(binary, config)
        if self._wait_live(self.envoy, self.ready_timeout_s) != "live":
            raise RuntimeError(f"plain Envoy did not start: {self.envoy.tail()}")
        self.current = (binary, config)

    def supervisor_pid(self) -> int | None:
        return None

    def _wait_live(self, envoy: PlainEnvoy, timeout_s: float) -> str:
        """live, exited, or timeout."""
        deadline = time.monotonic() + timeout_s
        assert envoy.proc is not None
        while time.monotonic() < deadline:
            if envoy.proc.poll() is not None:
                return "exited"
            info = server_info(self.admin_port)
            if info is not None and info.get("state") == "LIVE":
                return "live"
            time.sleep(0.01)
        return "timeout"

    def upgrade(self, label: str, binary: Path, config: Path, *,
                ready_timeout_s: float | None = None) -> UpgradeResult:
        assert self.envoy is not None and self.current is not None
        t0 = time.time()
        events: list[tuple[float, str]] = [(0.0, "command"), (0.0, "stop_sent")]

        def event(name: str) -> None:
            events.append((time.time() - t0, name))

        self.envoy.stop()
        event("old_exited")
        new = self._launch(binary, config)
        event("new_started")
        how = self._wait_live(new, ready_timeout_s or self.ready_timeout_s)
        detail: dict[str, Any] = {"new": how}
        if how == "live":
            event("new_live")
            self.envoy, self.current = new, (binary, config)
            result = "succeeded"
        else:
            event("new_failed")
            detail["new_log"] = new.tail(3)
            new.stop()
            old_binary, old_config = self.current
            self.envoy = self._launch(old_binary, old_config)
            event("old_restarted")
            back = self._wait_live(self.envoy, self.ready_timeout_s)
            event("old_live" if back == "live" else "old_failed")
            result = "rolled_back" if back == "live" else "failed"
        event("command_done")
        log(f"naive upgrade {label}: {result}; events {events}")
        return UpgradeResult(label=label, result=result, requested_wall=t0, events=events,
                             detail=detail)

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        remove_shared_memory(self.base_id)


def process_figures(pid: int, idle_s: float) -> dict[str, float]:
    """CPU (percent of one core) over `idle_s` seconds, and RSS, of one process (pid only, not
    its children)."""
    proc = psutil.Process(pid)
    t0 = proc.cpu_times()
    m0 = time.monotonic()
    time.sleep(idle_s)
    t1 = proc.cpu_times()
    elapsed = time.monotonic() - m0
    cpu = (t1.user + t1.system) - (t0.user + t0.system)
    return {"idle_s": round(elapsed, 2), "cpu_s": round(cpu, 3),
            "cpu_pct_of_one_core": round(100.0 * cpu / elapsed, 3),
            "rss_mb": round(proc.memory_info().rss / 1e6, 2)}


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 1e6, 2)
