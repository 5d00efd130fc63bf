"""The holding policy (`meshctl.manager.holding`) on a FakeClock: when the supervisor takes,
re-takes and drops the live generation's listening sockets. The parent it takes from is a real
hot-restart socket (meshctl's stand-in, holding real listening sockets) and the generation's
admin API a real HTTP server on a Unix socket serving what Envoy's /listeners says; with Envoy
itself: tests/integration/test_held_sockets.py."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.clock import FakeClock
from meshctl.envoy.admin import AdminClient
from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.envoy.sockethold import SocketHold
from meshctl.envoy.standin import ParentStandIn
from meshctl.manager.generation import Generation
from meshctl.manager.holding import ListenerHolding
from meshctl.manager.process import ChildProcess

EPOCH = 4


class Admin:
    """Envoy's /listeners, as JSON, on a Unix socket; counts the requests."""

    def __init__(self, directory: Path) -> None:
        self.ports: list[int] = []
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps({"listener_statuses": [
                    {"name": f"l{p}", "local_address": {"socket_address": {
                        "address": "127.0.0.1", "port_value": p}}} for p in owner.ports]}).encode()
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def address_string(self) -> str:
                return "unix"

            def log_message(self, *args: object) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.path = directory / "admin.sock"
        self.server = Server(str(self.path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()
        self.address_file = directory / "gen.admin"
        self.address_file.write_text(str(self.path))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class World:
    def __init__(self, directory: Path) -> None:
        self.files = HotRestartFiles(directory / "envoy", base_id=7)
        self.clock = FakeClock()
        self.admin = Admin(directory)
        self.parent_hold = SocketHold()
        self.stand_in = ParentStandIn(self.files.parent_socket(EPOCH), EPOCH, self.parent_hold)
        self.stand_in.start()
        self.gen = generation(EPOCH, self.admin.address_file, xds=False)
        self.sockets: dict[int, list[socket.socket]] = {}
        self.holdings: list[ListenerHolding] = []

    def listen(self, workers: int = 2) -> int:
        """A listener of the 'live generation': one reuse_port socket per worker."""
        first = reuse_port_socket(0)
        port = int(first.getsockname()[1])
        group = [first] + [reuse_port_socket(port) for _ in range(workers - 1)]
        for worker, sock in enumerate(group):
            self.parent_hold.put(sock.dup(), f"tcp://127.0.0.1:{port}", worker)
        self.sockets[port] = group
        self.admin.ports.append(port)
        return port

    def unlisten(self, port: int) -> None:
        self.admin.ports.remove(port)
        self.parent_hold.close_all()
        for p, group in self.sockets.items():
            if p != port:
                for worker, sock in enumerate(group):
                    self.parent_hold.put(sock.dup(), f"tcp://127.0.0.1:{p}", worker)

    def holding(self, enabled: bool = True) -> ListenerHolding:
        holding = ListenerHolding(self.files, workers=2, clock=self.clock, ledger=None,
                                  pending_s=60.0, enabled=enabled)
        self.holdings.append(holding)
        return holding

    def close(self) -> None:
        for holding in self.holdings:
            holding.drop("the test ends")
        self.stand_in.close()
        self.parent_hold.close_all()
        for group in self.sockets.values():
            for sock in group:
                sock.close()
        self.admin.close()


def reuse_port_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def generation(epoch: int, address_file: Path, xds: bool) -> Generation:
    me = os.getpid()
    return Generation(epoch=epoch, binary=Path("/bin/true"), config=Path("/dev/null"),
                      process=ChildProcess(pid=me, create_time=0.0, envoy_pid=me,
                                           envoy_create_time=0.0),
                      admin=AdminClient(address_file), log_path=Path("/dev/null"),
                      started_mono=0.0, started_wall=0.0, xds_driven=xds)


@pytest.fixture
def world() -> Iterator[World]:
    directory = Path(tempfile.mkdtemp(prefix="holding-"))
    w = World(directory)
    yield w
    w.close()
    shutil.rmtree(directory, ignore_errors=True)


def test_a_generation_going_live_is_held_socket_by_socket(world: World) -> None:
    port = world.listen(workers=2)
    holding = world.holding()

    holding.went_live(world.gen, [world.gen])

    assert holding.status() == {"sockets": 2, "addresses": [f"tcp://127.0.0.1:{port}"],
                                "pending": 0, "given": 0}


def test_a_static_config_is_never_asked_again_in_steady_state(world: World) -> None:
    world.listen()
    holding = world.holding()
    holding.went_live(world.gen, [world.gen])
    asked = world.admin.requests

    for _ in range(100):
        world.clock.advance(1.0)
        holding.tick(world.gen, [world.gen])

    assert world.admin.requests == asked and len(holding) == 2


def test_an_xds_driven_one_is_compared_every_second_and_retaken_when_it_changed(
        world: World) -> None:
    keep, gone = world.listen(), world.listen()
    world.gen.xds_driven = True
    holding = world.holding()
    holding.went_live(world.gen, [world.gen])
    asked = world.admin.requests

    world.clock.advance(0.5)
    holding.tick(world.gen, [world.gen])
    assert world.admin.requests == asked  # not yet a second

    world.clock.advance(0.5)
    holding.tick(world.gen, [world.gen])
    assert world.admin.requests == asked + 1 and len(holding) == 4  # the same: kept

    world.unlisten(gone)
    world.clock.advance(1.0)
    holding.tick(world.gen, [world.gen])
    assert holding.status()["addresses"] == [f"tcp://127.0.0.1:{keep}"]
    assert len(holding) == 2


def test_an_xds_driven_one_is_retaken_every_30_s_even_when_its_addresses_look_the_same(
        world: World) -> None:
    """A listener updated in place with new socket options is rebound under its address."""
    port = world.listen()
    world.gen.xds_driven = True
    holding = world.holding()
    holding.went_live(world.gen, [world.gen])
    rebound = reuse_port_socket(0)  # stands for the new socket under the same address
    world.parent_hold.close_all()
    world.parent_hold.put(rebound.dup(), f"tcp://127.0.0.1:{port}", 0)

    for _ in range(29):
        world.clock.advance(1.0)
        holding.tick(world.gen, [world.gen])
    assert holding.hold.fd_for(f"tcp://127.0.0.1:{port}", 1) is not None  # the old group

    world.clock.advance(1.0)
    holding.tick(world.gen, [world.gen])
    fd = holding.hold.fd_for(f"tcp://127.0.0.1:{port}", 0)
    assert fd is not None and os.fstat(fd).st_ino == os.fstat(rebound.fileno()).st_ino
    assert holding.hold.fd_for(f"tcp://127.0.0.1:{port}", 1) is None
    rebound.close()


def test_it_never_poses_as_a_child_whose_socket_name_a_live_generation_uses(
        world: World) -> None:
    world.listen()
    holding = world.holding()
    older = generation(EPOCH - 2, world.admin.address_file, xds=False)  # (EPOCH+1) % 3 too

    holding.went_live(world.gen, [older, world.gen])
    assert len(holding) == 0

    holding.tick(world.gen, [world.gen])  # the older one is gone: the take was due
    assert len(holding) == 2


def test_off_holds_nothing(world: World) -> None:
    world.listen()
    holding = world.holding(enabled=False)
    holding.went_live(world.gen, [world.gen])
    assert len(holding) == 0 and not holding.restart_from(EPOCH)


def test_a_restart_marks_the_sockets_pending_for_the_pending_window(world: World) -> None:
    world.listen()
    holding = world.holding()
    holding.went_live(world.gen, [world.gen])

    assert holding.restart_from(EPOCH)
    assert holding.status()["pending"] == 2


def test_dropping_closes_every_held_socket(world: World) -> None:
    port = world.listen()
    holding = world.holding()
    holding.went_live(world.gen, [world.gen])
    fds = [holding.hold.fd_for(f"tcp://127.0.0.1:{port}", w) for w in (0, 1)]

    holding.drop("a test")

    assert len(holding) == 0
    for fd in fds:
        assert fd is not None
        with pytest.raises(OSError):
            os.fstat(fd)
