"""The demo's ADS control plane against a real Envoy 1.40.0: Envoy gets its whole config from
it (LDS, RDS, CDS, EDS on one stream) and serves through it, follows a new snapshot, waits
while it is silent, and reconnects when it comes back on the same port."""

from __future__ import annotations

import contextlib
import http.client
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshctl.demo.controlplane import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ControlPlane,
    bootstrap_yaml,
    mesh_snapshot,
)
from tests.integration.conftest import free_port

pytestmark = pytest.mark.envoy

HEADER = "x-cp-version"
T = TypeVar("T")


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the test output is for failures


def get(port: int, path: str = "/") -> tuple[int, str | None, str]:
    """Status, the version header and the body of one GET on loopback."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader(HEADER), resp.read().decode(errors="replace")
    finally:
        conn.close()


def poll(probe: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = 20.0) -> T | None:
    """Probe until `ok` holds or the deadline passes; the last value either way (None: the
    last probe could not connect)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value: T | None
        try:
            value = probe()
        except OSError:
            value = None
        if value is not None and ok(value):
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(0.1)


class Mesh:
    """One test's world: the upstream, the control plane, the ports, Envoy when started."""

    def __init__(self, root: Path, envoy: Path, upstream_port: int) -> None:
        self.root = root
        self.envoy = envoy
        self.upstream = upstream_port
        self.admin = free_port()
        self.listener = free_port()
        self.cp = ControlPlane(mesh_snapshot("1", [self.listener], upstream_port)).start()
        self.log = root / "envoy.log"

    @contextlib.contextmanager
    def proxy(self, initial_fetch_timeout_s: float | None = 3.0) -> Iterator[None]:
        bootstrap = bootstrap_yaml(node_id="cp-test", xds_port=self.cp.port,
                                   admin_port=self.admin,
                                   initial_fetch_timeout_s=initial_fetch_timeout_s)
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                [str(self.envoy), "--config-yaml", bootstrap,
                 "--base-id", str(random.randint(10000, 60000)), "--disable-hot-restart",
                 "-l", "warning", "--concurrency", "1"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            yield
        finally:
            proc.kill()
            proc.wait()

    def ready(self) -> str:
        return get(self.admin, "/ready")[2].strip()

    def wait_live(self, timeout_s: float = 20.0) -> None:
        state = poll(self.ready, lambda s: s == "LIVE", timeout_s)
        assert state == "LIVE", f"/ready is {state!r}\n{self.envoy_log()}"

    def connected_state(self) -> int | None:
        text = get(self.admin, "/stats?filter=control_plane.connected_state")[2]
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "control_plane.connected_state":
                return int(value)
        return None

    def envoy_log(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def upstream_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def mesh(tmp_path: Path, envoy_new: Path, upstream_port: int) -> Iterator[Mesh]:
    world = Mesh(tmp_path, envoy_new, upstream_port)
    try:
        yield world
    finally:
        world.cp.stop()


def test_envoy_gets_its_whole_config_from_the_control_plane_and_serves_through_it(
        mesh: Mesh) -> None:
    with mesh.proxy():
        mesh.wait_live()
        assert get(mesh.listener) == (200, "1", "ok")
        for type_url in (LISTENER, ROUTE, CLUSTER, ENDPOINT):
            assert mesh.cp.wait_for_acks(type_url, "1", 5.0), type_url
        assert mesh.cp.connected_streams() == 1
        assert mesh.cp.nacks() == 0, mesh.envoy_log()


def test_a_new_snapshot_reaches_the_running_envoy_and_is_acked(mesh: Mesh) -> None:
    with mesh.proxy():
        mesh.wait_live()
        before = mesh.cp.requests()
        extra = free_port()
        mesh.cp.set_snapshot(mesh_snapshot("2", [mesh.listener, extra], mesh.upstream))

        served = poll(lambda: get(extra), lambda r: r == (200, "2", "ok"))
        assert served == (200, "2", "ok"), mesh.envoy_log()
        assert get(mesh.listener) == (200, "2", "ok")
        assert mesh.cp.wait_for_acks(LISTENER, "2", 5.0)
        assert mesh.cp.wait_for_acks(ROUTE, "2", 5.0)
        assert mesh.cp.nacks() == 0, mesh.envoy_log()
        # ACKs are not answered: the stream settles instead of looping.
        settled = mesh.cp.requests()
        time.sleep(0.5)
        assert settled > before and mesh.cp.requests() == settled


def test_a_silent_control_plane_keeps_envoy_from_going_live_until_it_answers(
        mesh: Mesh) -> None:
    mesh.cp.go_silent()
    with mesh.proxy(initial_fetch_timeout_s=0.0):
        assert poll(mesh.cp.requests, lambda n: n > 0, 10.0), mesh.envoy_log()
        time.sleep(2.0)
        assert mesh.ready() != "LIVE"
        assert mesh.cp.connected_streams() == 1

        mesh.cp.answer()
        mesh.wait_live()
        assert get(mesh.listener) == (200, "1", "ok")


def test_envoy_sees_the_control_plane_go_down_and_reconnects_when_it_comes_back(
        mesh: Mesh) -> None:
    with mesh.proxy():
        mesh.wait_live()
        assert mesh.connected_state() == 1
        port = mesh.cp.port

        mesh.cp.go_down()
        assert poll(mesh.connected_state, lambda s: s == 0, 10.0) == 0
        assert mesh.cp.connected_streams() == 0
        # Envoy keeps serving its last config while the control plane is away.
        assert get(mesh.listener) == (200, "1", "ok")

        mesh.cp.come_back()
        assert mesh.cp.port == port
        assert poll(mesh.connected_state, lambda s: s == 1, 20.0) == 1, mesh.envoy_log()
        assert mesh.cp.wait_for_acks(LISTENER, "1", 10.0)
        assert get(mesh.listener) == (200, "1", "ok")
