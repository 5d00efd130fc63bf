"""`meshctl demo --xds`: an xDS-driven Envoy under meshctl, and a control plane that misbehaves.

On loopback: an upstream service, a real ADS control plane (`meshctl.demo.controlplane`)
serving two listeners, their routes and an EDS cluster, and Envoy under `meshctl run` on an
Istio-style bootstrap. Under traffic, three upgrades:
  1. with the control plane healthy: succeeds;
  2. with the control plane silent (its stream open, nothing answered): the new generation is
     held short of LIVE by meshctl's gate, the old one keeps serving, the upgrade is rolled
     back at --ready-timeout-s (without meshctl, Envoy would have gone LIVE with no listener
     and refused every connection);
  3. with the control plane answering again: succeeds.
The count of failed requests across all three is the point: 0.
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from meshctl import errors
from meshctl.demo.controlplane import ControlPlane, bootstrap_yaml, mesh_snapshot
from meshctl.demo.loadgen import LoadGen, LoadStats
from meshctl.demo.run import end_supervisor, free_port, wait_running
from meshctl.manager import operations

HELD_READY_TIMEOUT_S = 4.0
"""Upgrade 2's --ready-timeout-s: how long the held generation waits for its config."""


class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = b"hello from the upstream\n"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass  # the demo prints its own lines


def _upgrade(state_dir: Path, ready_timeout_s: float | None) -> Mapping[str, Any]:
    drain: dict[str, Any] = {}
    if ready_timeout_s is not None:
        drain["ready_timeout_s"] = ready_timeout_s
    try:
        return operations.upgrade(state_dir, envoy=None, config=None, wait=True,
                                  timeout_s=120, run_preflight=True, drain=drain)
    except errors.MeshctlError as exc:
        return {"result": "refused", "error": str(exc)}


def run_xds_demo(duration_s: float, log: Callable[[str], None]) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="meshctl-demo-xds-"))
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    ports = [free_port(), free_port()]
    plane = ControlPlane(mesh_snapshot("1", ports, int(upstream.server_address[1]),
                                       clusters=2)).start()
    config = tmp / "ads.yaml"
    config.write_text(bootstrap_yaml(node_id="demo-sidecar", xds_port=plane.port,
                                     admin_port=free_port(), initial_fetch_timeout_s=1.0))
    state_dir = tmp / "state"
    cmd = [sys.executable, "-m", "meshctl", "run", "--state-dir", str(state_dir),
           "--config", str(config), "--drain-min-s", "1", "--drain-max-s", "10",
           "--health-address", "127.0.0.1:0", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    upgrades: list[Mapping[str, Any]] = []
    stats = LoadStats()
    try:
        log(f"control plane (ADS) on 127.0.0.1:{plane.port}; Envoy under meshctl takes "
            f"listeners 127.0.0.1:{ports[0]} and :{ports[1]}, their routes and an EDS "
            f"cluster from it")
        wait_running(state_dir, proc, 30)
        loads = [LoadGen("127.0.0.1", p, keepalive_workers=2, new_conn_workers=1).start()
                 for p in ports]
        pause_s = max(1.0, duration_s / 4)
        time.sleep(pause_s)
        log("upgrade 1: control plane healthy")
        upgrades.append(_upgrade(state_dir, None))
        time.sleep(pause_s)
        log(f"upgrade 2: control plane silent (stream open, no answer); "
            f"--ready-timeout-s {HELD_READY_TIMEOUT_S:g}")
        plane.go_silent()
        upgrades.append(_upgrade(state_dir, HELD_READY_TIMEOUT_S))
        plane.answer()
        time.sleep(pause_s)
        log("upgrade 3: control plane answering again")
        upgrades.append(_upgrade(state_dir, None))
        time.sleep(pause_s)
        for load in loads:
            stats.merge(load.stop())
        log("stopping the supervisor")
        operations.stop(state_dir, graceful=True, wait=True, timeout_s=60)
    finally:
        end_supervisor(proc)
        with contextlib.suppress(Exception):
            plane.stop()
        upstream.shutdown()
        upstream.server_close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {**stats.to_json(), "upgrades": upgrades,
            "expected": ["succeeded", "rolled_back", "succeeded"]}


def passed(report: dict[str, Any]) -> bool:
    return bool(report["failed"] == 0 and [u.get("result") for u in report["upgrades"]]
                == report["expected"])
