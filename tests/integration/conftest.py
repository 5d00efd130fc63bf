"""The harness for tests on real processes: a real supervisor (`python -m meshctl run`) in its
own session, real Envoy generations under it, the real CLI against it, a small upstream.

Every test ends with the supervisor stopped and a leak check: no Envoy process it started is
left (checked and, if need be, killed by pid, never by name), and no hot-restart socket or
shared-memory file is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from meshctl import errors
from meshctl.manager import operations

HTTP_LISTENER = """
  - name: http
    address:
      socket_address: {{address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {hcm_type}
          stat_prefix: http
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response:
                  status: 200
                  body: {{inline_string: "{body}"}}
              response_headers_to_add:
              - header: {{key: x-meshctl-epoch, value: "%ENVIRONMENT(MESHCTL_EPOCH)%"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"""

TCP_LISTENER = """
  - name: tcp
    address:
      socket_address: {{address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: upstream
"""

UPSTREAM_CLUSTER = """
  - name: upstream
    connect_timeout: 1s
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}
"""


HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
            "HttpConnectionManager")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Ports:
    """Loopback ports of one test's proxy: the same for every generation (they are handed over
    through the hot restart)."""

    def __init__(self) -> None:
        self.http = free_port()
        self.admin = free_port()
        self.tcp = free_port()


XDS_CLUSTER = """
  - name: xds
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}
"""

XDS_HANG = """node: {{id: meshctl-test, cluster: meshctl-test}}
dynamic_resources:
  lds_config:
    ads: {{}}
    initial_fetch_timeout: 0s
    resource_api_version: V3
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{cluster_name: xds}}
"""


def envoy_config(path: Path, ports: Ports, body: str = "v1", tcp_upstream: int | None = None,
                 extra_listener: int | None = None, xds_hang: int | None = None) -> Path:
    """A config for one test's ports. `extra_listener`: a second HTTP listener on that port
    (a bind conflict if the port is taken); `xds_hang`: listeners also from an ADS server at
    that port, with no fetch timeout, so initialization never ends if it does not answer."""
    text = ("admin:\n  address:\n    socket_address: "
            f"{{address: 127.0.0.1, port_value: {ports.admin}}}\n"
            "static_resources:\n  listeners:\n" + HTTP_LISTENER.format(port=ports.http, body=body,
                                                                  hcm_type=HCM_TYPE))
    if extra_listener is not None:
        text += HTTP_LISTENER.format(port=extra_listener, body=body, hcm_type=HCM_TYPE).replace(
            "name: http\n", "name: http_extra\n", 1)
    clusters = []
    if tcp_upstream is not None:
        text += TCP_LISTENER.format(port=ports.tcp)
        clusters.append(UPSTREAM_CLUSTER.format(port=tcp_upstream))
    if xds_hang is not None:
        clusters.append(XDS_CLUSTER.format(port=xds_hang))
        text = XDS_HANG.format() + text
    if clusters:
        text += "  clusters:" + "".join(clusters)
    path.write_text(text)
    return path


class EchoUpstream:
    """A TCP echo server, the upstream behind the tcp_proxy listener."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


class Meshctl:
    """One supervisor under test and the CLI pointed at its state dir."""

    def __init__(self, root: Path, envoy: Path, slot: str | None = None) -> None:
        self.root = root
        self.slot = slot
        self.run_dir = root / "state"
        """--state-dir of `meshctl run`: in pod mode, the dir both slots share."""
        self.state_dir = self.run_dir / f"slot-{slot}" if slot else self.run_dir
        """This supervisor's own state dir (control socket, state file, logs)."""
        self.envoy = envoy
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / f"supervisor{'-' + slot if slot else ''}.log"
        self.envoy_pids: dict[int, float] = {}
        """Every Envoy pid seen in a status, with its start time: the leak check's list."""
        self.base_id: int | None = None
        self.wrap: list[str] = []
        """A command the supervisor is started under (setpriv: no capabilities)."""

    # -- the supervisor

    def start(self, *args: str, config: Path | None = None, envoy: Path | None = None,
              wait: bool = True, timeout_s: float = 30.0) -> subprocess.Popen[bytes]:
        cmd = [*self.wrap, sys.executable, "-m", "meshctl", "run", "--state-dir", str(self.run_dir),
               "--envoy", str(envoy or self.envoy), "--health-address", "127.0.0.1:0",
               "--log-level", "debug"]
        if config is not None:
            cmd += ["--config", str(config)]
        if self.slot:
            cmd += ["--slot", self.slot]
        cmd += list(args)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        if wait:
            self.wait_for(lambda s: s.get("phase") == "running", timeout_s, "phase running")
        return self.proc

    def supervisor_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the supervisor did not exit within {timeout_s:g}s\n"
                        f"{self.supervisor_log()[-3000:]}")

    # -- the control API and the CLI

    def status(self) -> dict[str, Any]:
        snap = operations.status(self.state_dir)
        self._remember(snap)
        return snap

    def _remember(self, snap: dict[str, Any]) -> None:
        self.base_id = snap.get("base_id", self.base_id)
        for gen in snap.get("generations") or []:
            self.envoy_pids[int(gen["pid"])] = float(gen["create_time"])
            if gen.get("keeper_pid"):
                self.envoy_pids[int(gen["keeper_pid"])] = float(gen["keeper_create_time"])

    def cli(self, *args: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess[str]:
        """The real CLI in a subprocess, as a CI job runs it."""
        cmd = [sys.executable, "-m", "meshctl", *args]
        if args and args[0] in ("upgrade", "status", "stop"):
            cmd += ["--state-dir", str(self.state_dir)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        with contextlib.suppress(errors.MeshctlError):
            self.status()
        return done

    def wait_for(self, ready: Callable[[dict[str, Any]], bool], timeout_s: float,
                 what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        snap: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"the supervisor exited ({self.proc.returncode}) waiting for "
                            f"{what}\n{self.supervisor_log()[-3000:]}")
            with contextlib.suppress(errors.MeshctlError):
                snap = self.status()
                if ready(snap):
                    return snap
            time.sleep(0.1)
        pytest.fail(f"no {what} within {timeout_s:g}s; last status {json.dumps(snap)[:1500]}\n"
                    f"{self.supervisor_log()[-3000:]}")

    # -- the end of every test

    def shutdown(self, check_files: bool = True) -> list[str]:
        """Stop the supervisor if it runs, then return what leaked (and clean it up)."""
        leaks: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(errors.MeshctlError):
                self.status()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                leaks.append("supervisor did not stop within 90 s of SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid, created in self.envoy_pids.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) < 1.0 and \
                        proc.status() != psutil.STATUS_ZOMBIE:
                    leaks.append(f"Envoy pid {pid} still running")
                    proc.kill()
        hr = self.run_dir / "hr"
        if hr.is_dir() and check_files:
            leaks += [f"socket file left: {p}" for p in hr.iterdir()]
        if self.base_id is not None and check_files:
            shm = Path("/dev/shm") / f"envoy_shared_memory_{10 * self.base_id}"
            if shm.exists():
                leaks.append(f"shared memory left: {shm}")
                shm.unlink()
        return leaks


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short temp dir: Unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ports() -> Ports:
    return Ports()


@pytest.fixture
def meshctl(workdir: Path, envoy_new: Path) -> Iterator[Meshctl]:
    m = Meshctl(workdir, envoy_new)
    yield m
    leaks = m.shutdown()
    assert not leaks, f"left behind: {leaks}\n{m.supervisor_log()[-3000:]}"


@pytest.fixture
def upstream() -> Iterator[EchoUpstream]:
    up = EchoUpstream()
    yield up
    up.close()


@pytest.fixture
def pod(workdir: Path, envoy_new: Path) -> Iterator[tuple[Meshctl, Meshctl]]:
    a, b = Meshctl(workdir, envoy_new, slot="a"), Meshctl(workdir, envoy_new, slot="b")
    yield a, b
    leaks = a.shutdown(check_files=False) + b.shutdown(check_files=False)
    hr = workdir / "state" / "hr"
    leaks += [f"socket file left: {p}" for p in hr.iterdir()] if hr.is_dir() else []
    base = a.base_id or b.base_id
    shm = Path("/dev/shm") / f"envoy_shared_memory_{10 * (base or 0)}"
    if shm.exists():
        leaks.append(f"shared memory left: {shm}")
        shm.unlink()
    assert not leaks, f"{leaks}\n{a.supervisor_log()[-2000:]}\n{b.supervisor_log()[-2000:]}"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never answers: an xDS server that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    server.close()
    for conn in conns:
        conn.close()
