"""The stand-in for an ended parent generation (`meshctl.envoy.standin`).

Frames are what Envoy sends on its hot-restart sockets: an 8-byte big-endian length, then a
HotRestartMessage protobuf.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import stat
import struct
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshctl.envoy.hotrestart import HotRestartFiles
from meshctl.envoy.standin import ParentStandIn, reply_for, request_kind
from meshctl.errors import StateDirError
from meshctl.manager.state import StateDir

STATS_REQUEST = bytes.fromhex("0a021a00")  # request { stats {} }
TERMINATE_REQUEST = bytes.fromhex("0a022a00")  # request { terminate {} }
DRAIN_LISTENERS_REQUEST = bytes.fromhex("0a022200")  # request { drain_listeners {} }
PASS_LISTEN_SOCKET_REQUEST = bytes.fromhex("0a040a020801")  # request { pass_listen_socket {..} }
SHUTDOWN_ADMIN_REQUEST = bytes.fromhex("0a021200")  # request { shutdown_admin {} }
STATS_REPLY = bytes.fromhex("12021a00")  # reply { stats {} }
DIDNT_RECOGNIZE = bytes.fromhex("1801")  # didnt_recognize_your_last_message: true


def frame(body: bytes) -> bytes:
    return struct.pack(">Q", len(body)) + body


def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """The stand-in counts an answer just after sending it: the reply can arrive first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def unframe(data: bytes) -> bytes:
    (length,) = struct.unpack(">Q", data[:8])
    assert length == len(data) - 8
    return data[8:]


# ----------------------------------------------------------------- the pure parts


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (STATS_REQUEST, 3),
        (TERMINATE_REQUEST, 5),
        (DRAIN_LISTENERS_REQUEST, 4),
        (SHUTDOWN_ADMIN_REQUEST, 2),
        (PASS_LISTEN_SOCKET_REQUEST, 1),
    ],
)
def test_the_request_kind_is_the_field_number_inside_the_request(body: bytes, kind: int) -> None:
    assert request_kind(frame(body)) == kind


@pytest.mark.parametrize(
    "data",
    [
        b"",
        frame(b""),
        frame(STATS_REPLY),  # a reply, not a request
        frame(DIDNT_RECOGNIZE),
        frame(bytes.fromhex("0a00")),  # an empty request
        STATS_REQUEST,  # no length prefix
    ],
)
def test_anything_that_is_not_a_request_has_no_kind(data: bytes) -> None:
    assert request_kind(data) is None


def test_a_stats_request_gets_an_empty_stats_reply() -> None:
    reply = reply_for(request_kind(frame(STATS_REQUEST)))
    assert reply == frame(STATS_REPLY)
    assert reply == bytes.fromhex("0000000000000004" "12021a00")


@pytest.mark.parametrize("body", [TERMINATE_REQUEST, DRAIN_LISTENERS_REQUEST])
def test_terminate_and_drain_listeners_get_no_reply(body: bytes) -> None:
    assert reply_for(request_kind(frame(body))) is None


@pytest.mark.parametrize("body", [SHUTDOWN_ADMIN_REQUEST, PASS_LISTEN_SOCKET_REQUEST,
                                  STATS_REPLY, b""])
def test_anything_else_is_answered_like_a_parent_that_did_not_recognize_it(body: bytes) -> None:
    assert reply_for(request_kind(frame(body))) == frame(DIDNT_RECOGNIZE)


# ----------------------------------------------------------------- on a real socket


@pytest.fixture
def parent_path(sock_dir: Path) -> Path:
    return sock_dir / "envoy_parent_70"


@pytest.fixture(scope="module")
def stand_in() -> Iterator[ParentStandIn]:
    """One stand-in for the tests that only exchange messages with it: closing one waits for
    its 0.2 s receive timeout, which adds up."""
    directory = Path(tempfile.mkdtemp(prefix="mcu-", dir="/tmp"))
    stand_in = ParentStandIn(directory / "envoy_parent_70", epoch=0)
    stand_in.start()
    try:
        yield stand_in
    finally:
        stand_in.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def child(sock_dir: Path) -> Iterator[socket.socket]:
    """The child generation's end: a bound datagram socket, as Envoy's child socket is."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_dir / "envoy_child_71"))
    sock.settimeout(2.0)
    with sock:
        yield sock


def test_a_stand_in_answers_a_stats_request_on_its_socket(
    stand_in: ParentStandIn, child: socket.socket
) -> None:
    answered = stand_in.requests_answered
    child.sendto(frame(STATS_REQUEST), str(stand_in.path))
    reply = child.recv(65536)
    assert unframe(reply) == STATS_REPLY
    assert eventually(lambda: stand_in.requests_answered == answered + 1)


def test_a_stand_in_answers_every_stats_flush(
    stand_in: ParentStandIn, child: socket.socket
) -> None:
    answered = stand_in.requests_answered
    for _ in range(3):
        child.sendto(frame(STATS_REQUEST), str(stand_in.path))
        assert unframe(child.recv(65536)) == STATS_REPLY
    assert eventually(lambda: stand_in.requests_answered == answered + 3)


def test_a_stand_in_says_it_did_not_recognize_an_unknown_request(
    stand_in: ParentStandIn, child: socket.socket
) -> None:
    child.sendto(frame(bytes.fromhex("0a024200")), str(stand_in.path))  # request kind 8
    assert unframe(child.recv(65536)) == DIDNT_RECOGNIZE


def test_a_stand_in_answers_shutdown_admin_as_a_parent_with_reuse_port_on(
    stand_in: ParentStandIn, child: socket.socket
) -> None:
    # A child restarted after a crash asks this first, and aborts on any other answer.
    child.sendto(frame(SHUTDOWN_ADMIN_REQUEST), str(stand_in.path))
    assert unframe(child.recv(65536)) == bytes.fromhex("1206" "1204" "0800" "1001")


def test_a_stand_in_without_a_hold_has_no_socket_to_pass(
    stand_in: ParentStandIn, child: socket.socket
) -> None:
    child.sendto(frame(PASS_LISTEN_SOCKET_REQUEST), str(stand_in.path))
    reply = unframe(child.recv(65536))
    assert reply == bytes.fromhex("120d0a0b08ffffffffffffffffff01")  # fd -1


def test_a_stand_in_socket_is_a_socket_only_its_user_may_use(stand_in: ParentStandIn) -> None:
    mode = stand_in.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert not stand_in.path.with_name(stand_in.path.name + ".standin").exists()


def test_a_stand_in_notes_terminate_and_sends_nothing_back(
    parent_path: Path, child: socket.socket
) -> None:
    stand_in = ParentStandIn(parent_path, epoch=0)
    stand_in.start()
    try:
        assert not stand_in.terminate_received.is_set()
        child.sendto(frame(TERMINATE_REQUEST), str(parent_path))
        assert stand_in.terminate_received.wait(timeout=2.0)
        # The next datagram we receive answers the next request: nothing was sent for Terminate.
        child.sendto(frame(STATS_REQUEST), str(parent_path))
        assert unframe(child.recv(65536)) == STATS_REPLY
        assert eventually(lambda: stand_in.requests_answered == 1)
    finally:
        stand_in.close()


def test_a_stand_in_takes_over_the_path_of_a_socket_left_by_the_ended_parent(
    parent_path: Path, child: socket.socket
) -> None:
    old = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old.bind(str(parent_path))
    old.close()  # the parent is gone; its socket file is not
    stand_in = ParentStandIn(parent_path, epoch=0)
    stand_in.start()
    try:
        child.sendto(frame(STATS_REQUEST), str(parent_path))
        assert unframe(child.recv(65536)) == STATS_REPLY
    finally:
        stand_in.close()


def test_closing_a_stand_in_removes_its_socket_file(parent_path: Path) -> None:
    stand_in = ParentStandIn(parent_path, epoch=0)
    stand_in.start()
    assert parent_path.exists()
    stand_in.close()
    assert not parent_path.exists()


def test_closing_a_stand_in_leaves_a_socket_that_replaced_it_at_the_same_path(
    parent_path: Path,
) -> None:
    stand_in = ParentStandIn(parent_path, epoch=0)
    stand_in.start()
    newer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    with newer:
        parent_path.unlink()
        newer.bind(str(parent_path))  # a later generation reuses the name (epoch % 3)
        stand_in.close()
        assert parent_path.exists()


def test_closing_a_stand_in_that_never_started_is_harmless(parent_path: Path) -> None:
    ParentStandIn(parent_path, epoch=0).close()
    assert not parent_path.exists()


def start_error(stand_in: ParentStandIn) -> str | None:
    """Why start() failed, or None; the traceback (and what it holds) is dropped here."""
    try:
        stand_in.start()
    except OSError as exc:
        return str(exc)
    return None


def test_a_stand_in_can_bind_in_the_longest_state_dir_prepare_accepts(sock_dir: Path) -> None:
    root = sock_dir
    for length in range(200, len(str(sock_dir)) + 1, -1):
        root = sock_dir / ("s" * (length - len(str(sock_dir)) - 1))
        with contextlib.suppress(StateDirError):
            StateDir(root).prepare()
            break
    files = HotRestartFiles(StateDir(root).socket_prefix, base_id=99_999)
    stand_in = ParentStandIn(files.parent_socket(0), epoch=0)
    with warnings.catch_warnings():
        # start() does not close its socket when bind fails (reported); keep that quiet here
        warnings.simplefilter("ignore", ResourceWarning)
        failure = start_error(stand_in)
    try:
        assert failure is None, failure
    finally:
        stand_in.close()
