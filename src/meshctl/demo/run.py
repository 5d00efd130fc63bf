"""The demo job: a supervisor on loopback, traffic through it, one hot upgrade, the count."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshctl import errors
from meshctl.demo.loadgen import LoadGen
from meshctl.envoy.binary import check_executable
from meshctl.manager import operations
from meshctl.manager.runner import render_demo_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_config(dest: Path, listener_port: int, body: str) -> Path:
    """The bundled config for the demo: its listener port, its body, its admin socket (0600)
    beside the config."""
    return render_demo_config(dest, dest.with_name("admin.sock"), listener_port=listener_port,
                              body=body)


def wait_running(state_dir: Path, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise errors.StartFailed(f"the supervisor exited with {proc.returncode} at start")
        with contextlib.suppress(errors.NotRunning):
            if operations.status(state_dir).get("phase") == "running":
                return
        time.sleep(0.1)
    raise errors.StartFailed(f"the supervisor was not running after {timeout_s:g}s")


def end_supervisor(proc: subprocess.Popen[bytes]) -> None:
    """The demo's supervisor, if a failure left it running: SIGTERM (it drains and stops
    Envoy), then SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_demo(duration_s: float, to_envoy: str | None,
             log: Callable[[str], None]) -> dict[str, Any]:
    """Refuses bad input (BadInput) before it starts anything."""
    if not (duration_s >= 1):  # NaN too
        raise errors.BadInput(f"the demo needs at least 1 s of traffic, not {duration_s!r}")
    if to_envoy is not None:
        to_envoy = str(check_executable(Path(to_envoy).expanduser()))
    tmp = Path(tempfile.mkdtemp(prefix="meshctl-demo-"))
    port = free_port()
    v1 = demo_config(tmp / "v1.yaml", port, "hello from config v1")
    v2 = demo_config(tmp / "v2.yaml", port, "hello from config v2")
    state_dir = tmp / "state"
    cmd = [sys.executable, "-m", "meshctl", "run", "--state-dir", str(state_dir),
           "--config", str(v1), "--drain-min-s", "1", "--drain-max-s", "10",
           "--health-address", "127.0.0.1:0", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        log(f"starting Envoy under meshctl: listener 127.0.0.1:{port}, admin "
            f"{tmp / 'admin.sock'}")
        wait_running(state_dir, proc, 30)
        log(f"sending traffic for {duration_s:g}s (4 keep-alive connections + 1 new "
            f"connection per request)")
        load = LoadGen("127.0.0.1", port, keepalive_workers=4, new_conn_workers=1).start()
        time.sleep(duration_s / 3)
        log("hot-upgrading: new generation with config v2" +
            (f" and binary {to_envoy}" if to_envoy else ""))
        record = operations.upgrade(state_dir, envoy=to_envoy, config=v2, wait=True,
                                    timeout_s=120, run_preflight=True, drain={})
        time.sleep(max(0.0, duration_s * 2 / 3 - (record.get("total_s") or 0)))
        stats = load.stop()
        log("stopping the supervisor")
        operations.stop(state_dir, graceful=True, wait=True, timeout_s=60)
    finally:
        end_supervisor(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return {**stats.to_json(), "upgrade": record}
