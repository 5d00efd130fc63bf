"""The control socket (`meshctl.manager.control`): a real server on a real Unix socket, with a
test thread in the role of the supervisor's main loop."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl import errors
from meshctl.exitcodes import ExitCode
from meshctl.manager.control import Command, ControlServer, call

SNAPSHOT = {"phase": "running", "supervisor_pid": 4321, "base_id": 77, "epoch": 0,
            "generations": [{"epoch": 0, "pid": 999, "role": "live"}]}


class Loop:
    """Plays the supervisor's main loop: answers each queued command with `handler`."""

    def __init__(self, server: ControlServer, handler: Callable[[Command], None]) -> None:
        self.server = server
        self.handler = handler
        self.seen: list[Command] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import queue  # noqa: PLC0415

        while not self._stop.is_set():
            try:
                cmd = self.server.commands.get(timeout=0.05)
            except queue.Empty:
                continue
            self.seen.append(cmd)
            self.handler(cmd)


@pytest.fixture
def control_path(sock_dir: Path) -> Path:
    return sock_dir / "control.sock"


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[ControlServer, list[int]]]:
    """One server for the tests that only talk to it: closing a server takes up to its 0.2 s
    accept timeout, which adds up."""
    directory = Path(tempfile.mkdtemp(prefix="mcu-", dir="/tmp"))
    wakes: list[int] = []
    srv = ControlServer(directory / "control.sock", lambda: dict(SNAPSHOT),
                        lambda: wakes.append(1))
    srv.start()
    try:
        yield srv, wakes
    finally:
        srv.close()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def server(shared: tuple[ControlServer, list[int]]) -> Iterator[ControlServer]:
    srv, wakes = shared
    wakes.clear()
    yield srv
    assert srv.commands.empty(), "a test left a command nobody answered"


@pytest.fixture
def wakes(shared: tuple[ControlServer, list[int]]) -> list[int]:
    return shared[1]


@pytest.fixture
def server_path(server: ControlServer) -> Path:
    return server.path


def raw_exchange(path: Path, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        buf = b""
        while chunk := sock.recv(4096):
            buf += chunk
    reply = json.loads(buf)
    assert isinstance(reply, dict)
    return reply


# ----------------------------------------------------------------- status


def test_status_is_answered_from_the_published_snapshot(
    server: ControlServer, server_path: Path, wakes: list[int]
) -> None:
    assert call(server_path, "status") == SNAPSHOT
    assert server.commands.empty()
    assert wakes == []  # status never bothers the main loop


def test_status_reflects_the_latest_snapshot(control_path: Path) -> None:
    snapshot = {"phase": "starting"}
    srv = ControlServer(control_path, lambda: dict(snapshot), lambda: None)
    srv.start()
    try:
        assert call(control_path, "status") == {"phase": "starting"}
        snapshot["phase"] = "running"
        assert call(control_path, "status") == {"phase": "running"}
    finally:
        srv.close()


def test_the_control_socket_is_only_for_its_user(server: ControlServer,
                                                 server_path: Path) -> None:
    mode = server_path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_starting_replaces_a_stale_socket_left_by_a_dead_supervisor(control_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(control_path))
    stale.close()
    srv = ControlServer(control_path, lambda: {"phase": "running"}, lambda: None)
    srv.start()
    try:
        assert call(control_path, "status") == {"phase": "running"}
    finally:
        srv.close()


def test_closing_removes_the_socket(control_path: Path) -> None:
    srv = ControlServer(control_path, dict, lambda: None)
    srv.start()
    srv.close()
    assert not control_path.exists()


# ----------------------------------------------------------------- nobody there


def test_a_missing_socket_means_no_supervisor_runs(sock_dir: Path) -> None:
    with pytest.raises(errors.NotRunning, match=f"no supervisor is running on {sock_dir}$") \
            as info:
        call(sock_dir / "control.sock", "status")
    assert info.value.exit_code is ExitCode.NOT_RUNNING


def test_a_socket_nobody_listens_on_means_no_supervisor_runs(control_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(control_path))
    stale.close()  # a supervisor killed with SIGKILL leaves exactly this
    with pytest.raises(errors.NotRunning, match="stale control socket"):
        call(control_path, "status")


# ----------------------------------------------------------------- queued commands


def test_a_queued_command_is_answered_by_the_main_loop(
    server: ControlServer, server_path: Path, wakes: list[int]
) -> None:
    def handler(cmd: Command) -> None:
        cmd.answer(upgrade={"id": "u1", "binary": cmd.args["binary"]})

    with Loop(server, handler) as loop:
        reply = call(server_path, "upgrade", binary="/opt/envoy-1.40", drain_max_s=10)
    assert reply == {"upgrade": {"id": "u1", "binary": "/opt/envoy-1.40"}}
    [cmd] = loop.seen
    assert cmd.op == "upgrade"
    assert cmd.args == {"binary": "/opt/envoy-1.40", "drain_max_s": 10}
    assert wakes == [1]  # the loop was woken for it


@pytest.mark.parametrize("error", [
    errors.BadInput("Envoy binary not found: /nope"),
    errors.PreflightFailed("hot-restart version mismatch"),
    errors.StateDirError("cannot write state.json"),
    errors.Busy("upgrade refused: upgrade u1 is in progress"),
    errors.NotRunning("the supervisor is shutting down"),
    errors.UpgradeFailed("new generation exited"),
    errors.StartFailed("Envoy never LIVE"),
    errors.TimedOut("too slow"),
])
def test_a_refusal_reaches_the_caller_as_the_same_error_type_and_message(
    server: ControlServer, server_path: Path, error: errors.MeshctlError
) -> None:
    with Loop(server, lambda cmd: cmd.refuse(error)), \
            pytest.raises(errors.MeshctlError) as info:
        call(server_path, "stop", graceful=True)
    assert type(info.value) is type(error)
    assert str(info.value) == str(error)
    assert info.value.exit_code == error.exit_code


def test_a_refusal_with_an_unlisted_exit_code_is_a_general_error(
    server: ControlServer, server_path: Path
) -> None:
    with Loop(server, lambda cmd: cmd.refuse(errors.MeshctlError("something broke"))), \
            pytest.raises(errors.MeshctlError, match=r"^something broke$") as info:
        call(server_path, "stop")
    assert type(info.value) is errors.MeshctlError
    assert info.value.exit_code is ExitCode.FAILED


def test_answer_and_refuse_fill_the_reply_and_release_the_caller() -> None:
    ok = Command(op="stop", args={})
    ok.answer(phase="stopping")
    assert ok.done.is_set()
    assert ok.reply == {"ok": True, "phase": "stopping"}
    refused = Command(op="upgrade", args={})
    refused.refuse(errors.Busy("busy"))
    assert refused.done.is_set()
    assert refused.reply == {"ok": False, "error": "busy", "exit_code": 4}


def test_closing_refuses_commands_nobody_answered(control_path: Path) -> None:
    srv = ControlServer(control_path, dict, lambda: None)
    srv.start()
    pending = Command(op="upgrade", args={})
    srv.commands.put(pending)
    srv.close()
    assert pending.done.is_set()
    assert pending.reply == {"ok": False, "error": "the supervisor is shutting down",
                             "exit_code": int(ExitCode.NOT_RUNNING)}


# ----------------------------------------------------------------- bad clients


@pytest.mark.parametrize("data", [b"not json\n", b"[1, 2]\n", b"{\"no_op\": 1}\n",
                                  b"{\"op\": 5}\n", b"\n", b""])
def test_a_malformed_request_is_refused_as_a_usage_error(
    server: ControlServer, server_path: Path, data: bytes
) -> None:
    reply = raw_exchange(server_path, data)
    assert reply == {"ok": False, "error": "malformed request", "exit_code": int(ExitCode.USAGE)}
    assert server.commands.empty()


def test_the_server_keeps_answering_after_a_bad_client(
    server: ControlServer, server_path: Path
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(server_path))  # and hang up without a word
    raw_exchange(server_path, b"garbage\n")
    assert call(server_path, "status") == SNAPSHOT


# ----------------------------------------------------------------- a supervisor that fails mid-way


@pytest.fixture
def listener(control_path: Path) -> Iterator[socket.socket]:
    """A bare listening socket at the control path: a supervisor that answers nothing."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(control_path))
    sock.listen(1)
    with sock:
        yield sock


def serve_once(listener: socket.socket,
               action: Callable[[socket.socket], object]) -> threading.Thread:
    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            action(conn)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_supervisor_that_does_not_answer_in_time_is_a_timeout(
    listener: socket.socket, control_path: Path
) -> None:
    with pytest.raises(errors.TimedOut, match=r"did not answer within 0\.2s") as info:
        call(control_path, "status", timeout_s=0.2)
    assert info.value.exit_code is ExitCode.TIMEOUT


def test_a_supervisor_that_hangs_up_after_reading_the_request_is_not_running(
    listener: socket.socket, control_path: Path
) -> None:
    thread = serve_once(listener, lambda conn: conn.recv(4096))
    with pytest.raises(errors.NotRunning, match="closed the connection"):
        call(control_path, "status", timeout_s=5)
    thread.join(timeout=5)


def test_a_supervisor_that_dies_before_reading_the_request_is_not_running(
    listener: socket.socket, control_path: Path
) -> None:
    # Peek, so the request is still unread when the connection closes: the kernel resets it.
    thread = serve_once(listener, lambda conn: conn.recv(4096, socket.MSG_PEEK))
    try:
        with pytest.raises(errors.NotRunning):
            call(control_path, "status", timeout_s=5)
    finally:
        thread.join(timeout=5)
