"""Envoy's admin API as the supervisor uses it (`meshctl.envoy.admin`), against a real HTTP
server that answers like Envoy's admin listener."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meshctl.envoy.admin import AdminClient, AdminUnavailable, parse_address

# ----------------------------------------------------------------- parse_address


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:15000", ("127.0.0.1", 15000)),
        ("127.0.0.1:15000\n", ("127.0.0.1", 15000)),
        ("  10.1.2.3:9901  ", ("10.1.2.3", 9901)),
        ("[::1]:15000", ("::1", 15000)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_an_address_is_read_as_host_and_port(text: str, address: tuple[str, int]) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["", "\n", "127.0.0.1", "127.0.0.1:", ":15000",
                                  "127.0.0.1:http", "127.0.0.1:-1", "[::1]:1a"])
def test_a_partial_or_malformed_address_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not an address"):
        parse_address(text)


# ----------------------------------------------------------------- a fake admin listener


@dataclass
class Route:
    status: int
    body: bytes
    content_type: str = "text/plain"


@dataclass
class FakeAdmin:
    """A real HTTP server on 127.0.0.1 that answers from `routes` and records what it got."""

    server: ThreadingHTTPServer
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def answer(self, method: str, path: str, status: int, body: bytes | str,
               content_type: str = "text/plain") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.routes[(method, path)] = Route(status, data, content_type)


@pytest.fixture(scope="module")
def shared_admin_server() -> Iterator[FakeAdmin]:
    fake: FakeAdmin

    class Handler(BaseHTTPRequestHandler):
        def _respond(self) -> None:
            fake.requests.append((self.command, self.path))
            route = fake.routes.get((self.command, self.path), Route(404, b"invalid path\n"))
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            self.wfile.write(route.body)

        do_GET = _respond
        do_POST = _respond

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    fake = FakeAdmin(server)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


@pytest.fixture
def admin_server(shared_admin_server: FakeAdmin) -> FakeAdmin:
    """The shared server with no routes and no requests seen (one server per module: shutting
    one down waits for its poll interval)."""
    shared_admin_server.routes.clear()
    shared_admin_server.requests.clear()
    return shared_admin_server


@pytest.fixture
def address_file(tmp_path: Path) -> Path:
    return tmp_path / "gen-0.admin"


@pytest.fixture
def client(admin_server: FakeAdmin, address_file: Path) -> AdminClient:
    # Envoy writes the bound address with no trailing newline.
    address_file.write_text(f"127.0.0.1:{admin_server.port}")
    return AdminClient(address_file, timeout_s=1.0)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LISTENERS = {
    "listener_statuses": [
        {"name": "ingress", "local_address": {"socket_address": {
            "address": "0.0.0.0", "port_value": 10000}}},
        {"name": "dual", "local_address": {"socket_address": {
            "address": "0.0.0.0", "port_value": 10001}},
         "additional_local_addresses": [
             {"socket_address": {"address": "::", "port_value": 10002}},
             {"socket_address": {"address": "::", "port_value": 10001}}]},
        {"name": "unix", "local_address": {"pipe": {"path": "/tmp/envoy.sock"}}},
        {"name": "not-yet-bound", "local_address": {"socket_address": {
            "address": "0.0.0.0", "port_value": 0}}},
    ]
}

SERVER_INFO = {
    "version": "9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL",
    "state": "LIVE",
    "hot_restart_version": "11.104",
    "command_line_options": {"base_id": "4242", "restart_epoch": 2, "concurrency": 2},
}


# ----------------------------------------------------------------- address


def test_the_address_is_read_from_the_file_envoy_writes(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    assert client.address() == ("127.0.0.1", admin_server.port)


def test_there_is_no_address_before_envoy_writes_the_file(address_file: Path) -> None:
    assert AdminClient(address_file).address() is None


def test_a_half_written_address_file_counts_as_not_published_yet(address_file: Path) -> None:
    address_file.write_text("127.0.0.1:")
    assert AdminClient(address_file).address() is None


# ----------------------------------------------------------------- readiness


def test_a_generation_is_ready_when_ready_answers_200_live(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("GET", "/ready", 200, "LIVE\n")
    assert client.is_ready() is True
    assert admin_server.requests == [("GET", "/ready")]


@pytest.mark.parametrize(("status", "body"), [
    (503, "PRE_INITIALIZING\n"),
    (503, "INITIALIZING\n"),
    (503, "DRAINING\n"),
    (200, "DRAINING\n"),
    (500, "LIVE\n"),
])
def test_a_generation_is_not_ready_unless_it_is_live_with_200(
    client: AdminClient, admin_server: FakeAdmin, status: int, body: str
) -> None:
    admin_server.answer("GET", "/ready", status, body)
    assert client.is_ready() is False


def test_a_generation_is_not_ready_before_its_address_file_exists(address_file: Path) -> None:
    assert AdminClient(address_file).is_ready() is False


def test_a_generation_is_not_ready_when_nothing_listens_on_its_address(
    address_file: Path,
) -> None:
    address_file.write_text(f"127.0.0.1:{closed_port()}")
    assert AdminClient(address_file, timeout_s=0.5).is_ready() is False


# ----------------------------------------------------------------- listeners


def test_listener_ports_are_the_bound_tcp_ports_of_every_listener(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("GET", "/listeners?format=json", 200, json.dumps(LISTENERS),
                        "application/json")
    assert client.listener_ports() == frozenset({10000, 10001, 10002})


def test_listener_ports_never_include_the_admin_port(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("GET", "/listeners?format=json", 200, json.dumps(LISTENERS))
    assert admin_server.port not in client.listener_ports()


def test_a_generation_without_listeners_has_no_listener_ports(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("GET", "/listeners?format=json", 200, "{}")
    assert client.listener_ports() == frozenset()


def test_listener_ports_are_unavailable_when_the_admin_api_refuses(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("GET", "/listeners?format=json", 503, "no")
    with pytest.raises(AdminUnavailable, match="503"):
        client.listener_ports()


def test_listener_ports_are_unavailable_without_an_address_file(address_file: Path) -> None:
    with pytest.raises(AdminUnavailable, match="not published"):
        AdminClient(address_file).listener_ports()


def test_listener_ports_are_unavailable_when_the_admin_listener_is_gone(
    address_file: Path,
) -> None:
    port = closed_port()
    address_file.write_text(f"127.0.0.1:{port}")
    with pytest.raises(AdminUnavailable, match=f"127.0.0.1:{port}/listeners"):
        AdminClient(address_file, timeout_s=0.5).listener_ports()


# ----------------------------------------------------------------- server info and drain


def test_server_info_gives_the_version_state_restart_epoch_and_hot_restart_version(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("GET", "/server_info", 200, json.dumps(SERVER_INFO))
    info = client.server_info()
    assert info.version == SERVER_INFO["version"]
    assert info.state == "LIVE"
    assert info.epoch == 2
    assert info.hot_restart_version == "11.104"


def test_server_info_is_unavailable_when_the_admin_api_refuses(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("GET", "/server_info", 500, "")
    with pytest.raises(AdminUnavailable, match="500"):
        client.server_info()


def test_a_graceful_drain_posts_drain_listeners_with_graceful(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("POST", "/drain_listeners?graceful", 200, "OK\n")
    client.drain_listeners()
    assert admin_server.requests == [("POST", "/drain_listeners?graceful")]


def test_an_immediate_drain_posts_drain_listeners_without_graceful(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    admin_server.answer("POST", "/drain_listeners", 200, "OK\n")
    client.drain_listeners(graceful=False)
    assert admin_server.requests == [("POST", "/drain_listeners")]


def test_a_refused_drain_is_reported_as_unavailable(
    client: AdminClient, admin_server: FakeAdmin
) -> None:
    with pytest.raises(AdminUnavailable, match="404"):
        client.drain_listeners()
