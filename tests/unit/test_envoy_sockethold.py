"""The hot-restart messages meshctl writes and reads (`hrwire`), and the hold's bookkeeping
(`sockethold`) on real sockets: a stand-in holding sockets plays the parent a hold takes
from, the way a restarted Envoy takes them. With Envoy itself: tests/integration/
test_held_sockets.py."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.envoy import hrwire
from meshctl.envoy.sockethold import HoldError, ListenKey, SocketHold, parse_url
from meshctl.envoy.standin import ParentStandIn

# ----------------------------------------------------------------- the wire

def test_a_pass_listen_socket_request_reads_back_as_written() -> None:
    req = hrwire.parse_request(hrwire.pass_listen_socket_request("tcp://127.0.0.1:10000", 3))
    assert req == hrwire.Request(kind=hrwire.Req.PASS_LISTEN_SOCKET,
                                 address="tcp://127.0.0.1:10000", worker_index=3)


def test_worker_zero_is_left_out_as_protobuf_does() -> None:
    data = hrwire.unframe(hrwire.pass_listen_socket_request("tcp://[::1]:1", 0))
    assert data == bytes.fromhex("0a11" "0a0f" "0a0d") + b"tcp://[::1]:1"


@pytest.mark.parametrize("fd", [-1, 0, 7, 1023])
def test_a_pass_listen_socket_reply_carries_its_fd_number(fd: int) -> None:
    reply = hrwire.parse_reply(hrwire.pass_listen_socket_reply(fd))
    assert (reply.kind, reply.fd) == (1, fd)


def test_the_empty_request_is_a_request_of_no_kind_and_its_answer_is_didnt_recognize() -> None:
    assert hrwire.parse_request(hrwire.empty_request()) == hrwire.Request(kind=None)
    assert hrwire.parse_reply(hrwire.didnt_recognize()).didnt_recognize


def test_a_shutdown_admin_reply_is_kind_two() -> None:
    assert hrwire.parse_reply(hrwire.shutdown_admin_reply(1_700_000_000, True)).kind == 2


@pytest.mark.parametrize("data", [b"", b"\x00" * 8 + b"\x0a", hrwire.frame(b"\x0a\x05ab"),
                                  hrwire.frame(b"\x0f")])
def test_garbage_is_not_a_request(data: bytes) -> None:
    assert hrwire.parse_request(data) is None


@pytest.mark.parametrize(("url", "key"), [
    ("tcp://127.0.0.1:10000", ListenKey("tcp", "127.0.0.1", 10000)),
    ("udp://[::]:53", ListenKey("udp", "::", 53)),
    ("tcp://[0:0:0:0:0:0:0:1]:80", ListenKey("tcp", "::1", 80)),
])
def test_addresses_are_compared_normalized(url: str, key: ListenKey) -> None:
    assert parse_url(url) == key
    assert parse_url(key.url) == key


@pytest.mark.parametrize("url", ["127.0.0.1:80", "sctp://1.2.3.4:5", "tcp://host:80",
                                 "tcp://1.2.3.4:x", "tcp://1.2.3.4"])
def test_what_is_not_an_ip_listening_address_is_none(url: str) -> None:
    assert parse_url(url) is None


# ----------------------------------------------------------------- the hold, on real sockets

@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hold-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def listener() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


class Parent:
    """A generation's parent socket, answering from a hold: what meshctl's stand-in is."""

    def __init__(self, directory: Path) -> None:
        self.hold = SocketHold()
        self.path = directory / "envoy_parent_0"
        self.child_path = directory / "envoy_child_1"
        self.stand_in = ParentStandIn(self.path, 0, self.hold)
        self.stand_in.start()

    def close(self) -> None:
        self.stand_in.close()
        self.hold.close_all()


@pytest.fixture
def parent(sock_dir: Path) -> Iterator[Parent]:
    p = Parent(sock_dir)
    yield p
    p.close()


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def test_a_hold_takes_the_very_sockets_of_each_worker_and_nothing_else(parent: Parent) -> None:
    a0, a1, b = listener(), listener(), listener()
    url_a = f"tcp://127.0.0.1:{a0.getsockname()[1]}"
    parent.hold.put(a0, url_a, 0)
    parent.hold.put(a1, url_a, 1)  # another socket of the same group (reuse_port)
    parent.hold.put(b, f"tcp://127.0.0.1:{b.getsockname()[1]}", 0)
    hold = SocketHold()

    result = hold.take(parent.path, parent.child_path, [url_a], workers=4, now=0.0)

    assert (result.taken, result.kept, result.closed) == (2, 0, 0)
    assert hold.fd_for(url_a, 0) is not None and hold.fd_for(url_a, 2) is None
    taken = {os.fstat(hold.fd_for(url_a, w) or -1).st_ino for w in (0, 1)}
    assert taken == {inode(a0), inode(a1)}
    assert not parent.child_path.exists()  # the child's name is free again
    hold.close_all()


def test_a_taken_socket_is_not_inherited_by_children(parent: Parent) -> None:
    a = listener()
    url = f"tcp://127.0.0.1:{a.getsockname()[1]}"
    parent.hold.put(a, url)
    hold = SocketHold()
    hold.take(parent.path, parent.child_path, [url], workers=1, now=0.0)
    fd = hold.fd_for(url, 0)
    assert fd is not None and not os.get_inheritable(fd)
    hold.close_all()


def test_a_retake_keeps_its_sockets_and_closes_the_ones_the_parent_dropped(
        parent: Parent) -> None:
    a, b = listener(), listener()
    url_a, url_b = (f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in (a, b))
    parent.hold.put(a, url_a)
    parent.hold.put(b, url_b)
    hold = SocketHold()
    hold.take(parent.path, parent.child_path, [url_a, url_b], workers=1, now=0.0)
    fd_a = hold.fd_for(url_a, 0)

    result = hold.take(parent.path, parent.child_path, [url_a], workers=1, now=1.0)

    assert (result.taken, result.kept, result.closed) == (0, 1, 1)
    assert hold.fd_for(url_a, 0) == fd_a and hold.fd_for(url_b, 0) is None
    hold.close_all()


def test_sockets_pending_for_a_restarted_generation_stay_until_their_deadline(
        parent: Parent) -> None:
    a = listener()
    url = f"tcp://127.0.0.1:{a.getsockname()[1]}"
    parent.hold.put(a, url)
    hold = SocketHold()
    hold.take(parent.path, parent.child_path, [url], workers=1, now=0.0)
    hold.expect(until=10.0)
    parent.hold.close_all()  # a restarted generation that has no listener yet (LDS pending)

    assert hold.take(parent.path, parent.child_path, [url], workers=1, now=5.0).kept == 1
    assert hold.pending() == 1
    assert hold.take(parent.path, parent.child_path, [url], workers=1, now=10.0).closed == 1
    assert len(hold) == 0


def test_a_parent_that_is_gone_is_a_hold_error_and_the_hold_is_unchanged(
        sock_dir: Path) -> None:
    hold = SocketHold()
    with pytest.raises(HoldError, match="cannot reach"):
        hold.take(sock_dir / "envoy_parent_0", sock_dir / "envoy_child_1",
                  ["tcp://127.0.0.1:1"], workers=1, now=0.0)
    assert len(hold) == 0


def test_a_parent_that_does_not_answer_is_a_hold_error_within_the_timeout(
        sock_dir: Path) -> None:
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    mute.bind(str(sock_dir / "envoy_parent_0"))
    hold = SocketHold()
    with pytest.raises(HoldError, match="did not answer"):
        hold.take(sock_dir / "envoy_parent_0", sock_dir / "envoy_child_1",
                  ["tcp://127.0.0.1:1"], workers=1, now=0.0, timeout_s=0.2)
    mute.close()


def test_a_stand_in_hands_a_held_socket_to_a_restarted_child_and_counts_it(
        parent: Parent) -> None:
    a = listener()
    url = f"tcp://127.0.0.1:{a.getsockname()[1]}"
    parent.hold.put(a, url)
    parent.hold.expect(until=1e9)
    child = SocketHold()

    child.take(parent.path, parent.child_path, [url], workers=1, now=0.0)

    assert parent.hold.given == 1 and parent.hold.pending() == 0
    child.close_all()


# ----------------------------------------------------------------- the relay (a recovery's parent)

def test_a_relay_gives_held_sockets_forwards_the_rest_and_gives_the_parent_its_name_back(
        sock_dir: Path) -> None:
    path = sock_dir / "envoy_parent_0"
    parent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # the live parent's socket
    parent.bind(str(path))
    parent.settimeout(2)
    link = sock_dir / "envoy_parent_0.r"
    os.link(path, link)
    held = listener()
    url = f"tcp://127.0.0.1:{held.getsockname()[1]}"
    hold = SocketHold()
    hold.put(held, url)
    relay = ParentStandIn(path, 0, hold, relay_to=link)
    relay.start()
    child = SocketHold()
    try:
        child.take(path, sock_dir / "envoy_child_1", [url], workers=1, now=0.0)
        child_fd = child.fd_for(url, 0)
        assert child_fd is not None and os.fstat(child_fd).st_ino == inode(held)

        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as asker:
            asker.sendto(hrwire.frame(bytes.fromhex("0a021200")), str(path))  # ShutdownAdmin
            assert parent.recv(4096) == hrwire.frame(bytes.fromhex("0a021200"))  # forwarded

        relay.close()  # the recovery is gone: the parent gets its own name back
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as asker:
            asker.sendto(b"x", str(path))
            assert parent.recv(16) == b"x"
        assert not link.exists()
    finally:
        relay.close()
        child.close_all()
        hold.close_all()
        parent.close()


def test_a_relay_whose_parent_is_gone_answers_as_a_stand_in(sock_dir: Path) -> None:
    path = sock_dir / "envoy_parent_0"
    parent = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    parent.bind(str(path))
    link = sock_dir / "envoy_parent_0.r"
    os.link(path, link)
    relay = ParentStandIn(path, 0, SocketHold(), relay_to=link)
    relay.start()
    parent.close()  # the parent exited: its socket refuses
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as child:
            child.bind(str(sock_dir / "envoy_child_1"))
            child.settimeout(2)
            child.sendto(hrwire.frame(bytes.fromhex("0a021a00")), str(path))  # Stats
            assert child.recv(4096) == hrwire.empty_stats_reply()
        assert relay.relay_to is None and not link.exists()
    finally:
        relay.close()
