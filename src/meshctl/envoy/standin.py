"""A stand-in for a parent generation that meshctl ended before Envoy's own timer did.

Why (Trap 2 in docs/traps.md, upstream issue 7468, reproduced here with 1.40.0): the new
generation keeps talking to its parent's socket after the parent is gone. Every stats flush (~5
s) it sends a Stats request and blocks its main thread until the reply comes; at
--parent-shutdown-time-s it sends Terminate. If nothing is bound there, the send fails, Envoy
retries for ~10 s with its main thread blocked (admin dead) and then aborts: the new generation
dies and traffic stops. If something is bound but does not answer the Stats request, the main
thread blocks forever.

So, before meshctl signals a draining parent, it binds this stand-in at the parent's socket
path (bind to a temporary name, then rename over the path: the path never dangles), and
answers like a parent that has nothing left to report:
  Stats request     -> an empty Stats reply
  Terminate         -> nothing (noted: from then on the child sends no more)
  DrainListeners    -> nothing (no reply expected)
  anything else     -> `didnt_recognize_your_last_message`, as a real parent does

It runs in its own thread so that a busy supervisor loop can never stall Envoy's main thread.
Wire format: an 8-byte big-endian length, then a HotRestartMessage protobuf; we only need the
outer field numbers, so there is no protobuf dependency.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# HotRestartMessage: request = 1, reply = 2, didnt_recognize_your_last_message = 3.
# Request oneof: pass_listen_socket = 1, shutdown_admin = 2, stats = 3, drain_listeners = 4,
# terminate = 5.
_REQ_STATS = 3
_REQ_DRAIN_LISTENERS = 4
_REQ_TERMINATE = 5
_EMPTY_STATS_REPLY = bytes([0x12, 0x02, 0x1A, 0x00])  # reply { stats {} }
_DIDNT_RECOGNIZE = bytes([0x18, 0x01])
_HEADER = struct.Struct(">Q")


def request_kind(frame: bytes) -> int | None:
    """The Request oneof field number of one framed message, or None if it is not a request."""
    if len(frame) < _HEADER.size + 3:
        return None
    body = frame[_HEADER.size:]
    if body[0] != 0x0A:  # field 1 (request), wire type 2
        return None
    # body[1] is the request's length (a one-byte varint for these small messages)
    pos = 1
    while pos < len(body) and body[pos] & 0x80:
        pos += 1
    pos += 1
    if pos >= len(body):
        return None
    return body[pos] >> 3


def reply_for(kind: int | None) -> bytes | None:
    if kind == _REQ_STATS:
        payload = _EMPTY_STATS_REPLY
    elif kind in (_REQ_TERMINATE, _REQ_DRAIN_LISTENERS):
        return None
    else:
        payload = _DIDNT_RECOGNIZE
    return _HEADER.pack(len(payload)) + payload


class ParentStandIn:
    """Bound at `path` from `start()` until `close()`; answers in a background thread."""

    def __init__(self, path: Path, epoch: int) -> None:
        self.path = path
        self.epoch = epoch
        self.terminate_received = threading.Event()
        self.requests_answered = 0
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"standin-{epoch}", daemon=True
        )

    def start(self) -> None:
        # ".si" keeps the name shorter than Envoy's own "_udp_parent_" sockets, which the
        # state dir's path-length check allows for.
        tmp = self.path.with_name(self.path.name + ".si")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.rename(tmp, self.path)  # atomic: the parent path is never missing
            self._inode = self.path.stat().st_ino
        except OSError:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        sock.settimeout(0.2)
        self._sock = sock
        self._thread.start()
        log.info("stand-in bound at %s for ended generation %d", self.path, self.epoch)

    def _serve(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._stop.is_set():
            try:
                frame, sender = sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            kind = request_kind(frame)
            if kind == _REQ_TERMINATE:
                self.terminate_received.set()
            reply = reply_for(kind)
            if reply is not None and sender:
                try:
                    sock.sendto(reply, sender)
                    self.requests_answered += 1
                except OSError as exc:
                    log.warning("stand-in %d could not answer %s: %s", self.epoch, sender, exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        # Unlink only if the path is still ours (a later generation may reuse the name).
        with contextlib.suppress(FileNotFoundError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
