"""The control socket: how `meshctl status|upgrade|stop` reach a running supervisor.

A Unix stream socket in the state dir, mode 0600 inside a 0700 dir, and each peer's uid checked
with SO_PEERCRED: only the supervisor's own user may talk to it. There is no TCP control port.

Protocol: one JSON object per line each way. Request `{"op": ...}`; reply `{"ok": true, ...}`
or `{"ok": false, "error": "<one line>", "exit_code": N}`.

The server runs in a thread but never acts: `status` is answered from the snapshot the main
loop publishes each tick, and every other op is queued for the main loop, which owns all
processes (Envoy must be spawned from the main thread, see `process`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshctl import errors
from meshctl.exitcodes import ExitCode

log = logging.getLogger(__name__)

_MAX_REQUEST = 64 * 1024
_ERRORS_BY_CODE: dict[int, type[errors.MeshctlError]] = {
    cls.exit_code: cls
    for cls in (errors.BadInput, errors.PreflightFailed, errors.StateDirError, errors.Busy,
                errors.NotRunning, errors.UpgradeFailed, errors.StartFailed, errors.TimedOut)
}


@dataclass
class Command:
    """One request for the main loop; it fills `reply` and sets `done`."""

    op: str
    args: dict[str, Any]
    reply: dict[str, Any] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)

    def answer(self, **reply: Any) -> None:
        self.reply = {"ok": True, **reply}
        self.done.set()

    def refuse(self, error: errors.MeshctlError) -> None:
        self.reply = {"ok": False, "error": str(error), "exit_code": int(error.exit_code)}
        self.done.set()


class ControlServer:
    def __init__(self, path: Path, snapshot: Callable[[], Mapping[str, Any] | None],
                 wake: Callable[[], None]) -> None:
        self.path = path
        self.commands: queue.Queue[Command] = queue.Queue()
        self._snapshot = snapshot
        self._wake = wake
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a dead supervisor (we hold the lock)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600: no window where it is open
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=3)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        # Nobody will answer queued commands now; release their callers.
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                break
            cmd.refuse(errors.NotRunning("the supervisor is shutting down"))

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    self._handle(conn)
                except Exception:  # a bad client must never kill the control thread
                    log.exception("control request failed")

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid != os.getuid():
            log.warning("control: refused uid %d", uid)
            _send(conn, {"ok": False, "error": "permission denied: not the supervisor's user",
                         "exit_code": int(ExitCode.FAILED)})
            return
        request = _recv(conn)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            _send(conn, {"ok": False, "error": "malformed request",
                         "exit_code": int(ExitCode.USAGE)})
            return
        op = request.pop("op")
        if op == "status":
            _send(conn, {"ok": True, **(self._snapshot() or {"phase": "starting"})})
            return
        cmd = Command(op=op, args=request)
        self.commands.put(cmd)
        self._wake()
        if not cmd.done.wait(timeout=30):
            _send(conn, {"ok": False, "error": "the supervisor did not answer in 30s",
                         "exit_code": int(ExitCode.TIMEOUT)})
            return
        _send(conn, cmd.reply)


def _send(conn: socket.socket, obj: dict[str, Any]) -> None:
    conn.sendall(json.dumps(obj).encode() + b"\n")


def _recv(conn: socket.socket) -> Any:
    buf = b""
    while b"\n" not in buf:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > _MAX_REQUEST:
            return None
    try:
        return json.loads(buf.split(b"\n", 1)[0] or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def call(path: Path, op: str, timeout_s: float = 35.0, **args: Any) -> dict[str, Any]:
    """Send one request to the supervisor on `path`; raise the matching MeshctlError on refusal."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    with sock:
        try:
            sock.connect(str(path))
        except FileNotFoundError as exc:
            raise errors.NotRunning(f"no supervisor is running on {path.parent}") from exc
        except ConnectionRefusedError as exc:
            raise errors.NotRunning(
                f"no supervisor is running on {path.parent} (stale control socket)"
            ) from exc
        except PermissionError as exc:
            raise errors.StateDirError(f"cannot reach {path}: permission denied") from exc
        # Whoever answers must be our own user's supervisor: its status names binaries that
        # the pre-flight runs, and root must never take that from another user.
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, server_uid, _gid = struct.unpack("3i", creds)
        if server_uid != os.getuid():
            raise errors.StateDirError(f"the process answering on {path} runs as uid "
                                       f"{server_uid}, not as us: refusing to talk to it")
        try:
            _send(sock, {"op": op, **args})
            reply = _recv(sock)
        except TimeoutError as exc:
            raise errors.TimedOut(f"the supervisor did not answer within {timeout_s:g}s") from exc
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise errors.NotRunning(
                f"the supervisor on {path.parent} closed the connection (stopping?)") from exc
    if not isinstance(reply, dict):
        raise errors.NotRunning(f"the supervisor on {path.parent} closed the connection")
    if not reply.get("ok"):
        code = int(reply.get("exit_code", ExitCode.FAILED))
        cls = _ERRORS_BY_CODE.get(code, errors.MeshctlError)
        raise cls(str(reply.get("error", "refused")))
    reply.pop("ok", None)
    return reply
