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
After a crash (the same stand-in, given a `SocketHold`: docs/reliability.md), the restarted
generation hot-restarts from it as from a parent, and it also answers what a starting child asks:
  TestConnection    -> nothing (as a real parent: the child only checks the send succeeds)
  ShutdownAdmin     -> the first generation's start time, reuse_port default on
  PassListenSocket  -> the held socket for that address and worker (SCM_RIGHTS), or fd -1
so the restarted Envoy adopts the sockets, and the connections queued in them while no Envoy
ran, instead of binding new ones.

As a relay (`relay_to`: a second name of a live parent's own socket), it stands in front of a
parent that is alive: it answers PassListenSocket from the hold and forwards every other
request to the parent, which answers the child directly (a parent always replies to its
child's fixed socket name). The recovery generation of Trap 1 hot-restarts through one: if the
failed child had already made the parent close its listeners, the held sockets, and the
connections queued in them, are what the recovery takes; the parent still drains and
terminates as usual. Once the parent is gone, the relay answers as a stand-in.

Wire format: `meshctl.envoy.hrwire`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from pathlib import Path

from meshctl.envoy import hrwire
from meshctl.envoy.sockethold import SocketHold

log = logging.getLogger(__name__)


def request_kind(frame: bytes) -> int | None:
    """The Request oneof field number of one framed message, or None if it is not a request
    (or has no kind set)."""
    request = hrwire.parse_request(frame)
    return request.kind if request is not None else None


def reply_for(kind: int | None) -> bytes | None:
    """The answer of a parent with nothing left to report, for the requests that need no
    hold; None: no reply is expected."""
    if kind == hrwire.Req.STATS:
        return hrwire.empty_stats_reply()
    if kind in (hrwire.Req.TERMINATE, hrwire.Req.DRAIN_LISTENERS, hrwire.Req.TEST_CONNECTION):
        return None
    return hrwire.didnt_recognize()


class ParentStandIn:
    """Bound at `path` from `start()` until `close()`; answers in a background thread."""

    def __init__(self, path: Path, epoch: int, hold: SocketHold | None = None,
                 start_time_s: int = 0, relay_to: Path | None = None) -> None:
        self.path = path
        self.epoch = epoch
        self.hold = hold
        """Set when a generation restarts from this stand-in after a crash."""
        self.relay_to = relay_to
        """A live parent's socket (a hard link to it): everything but PassListenSocket goes
        there while it answers."""
        self.forwarded = 0
        self.start_time_s = start_time_s
        self.sockets_given = 0
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
        if self.relay_to is not None:
            log.info("relay bound at %s in front of generation %d (%d held socket(s))",
                     self.path, self.epoch, len(self.hold) if self.hold is not None else 0)
        else:
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
            request = hrwire.parse_request(frame)
            kind = request.kind if request is not None else None
            if kind == hrwire.Req.TERMINATE:
                self.terminate_received.set()
            if not sender and self.relay_to is None:
                continue  # nobody to answer (a relay forwards: the parent answers the child)
            try:
                self._answer(sock, request, kind, sender, frame)
            except OSError as exc:
                log.warning("stand-in %d could not answer %s: %s", self.epoch, sender, exc)

    def _answer(self, sock: socket.socket, request: hrwire.Request | None, kind: int | None,
                sender: str, frame: bytes = b"") -> None:
        if self.relay_to is not None and frame and self._forward(sock, request, kind, frame):
            return
        if not sender:
            return
        if kind == hrwire.Req.PASS_LISTEN_SOCKET and request is not None:
            if self.hold is not None and self.hold.send_fd(sock, request.address,
                                                           request.worker_index, sender):
                self.sockets_given += 1
            elif self.hold is None:
                sock.sendto(hrwire.pass_listen_socket_reply(-1), sender)
        elif kind == hrwire.Req.SHUTDOWN_ADMIN:
            # reuse_port default on: what the dead generation, started without a parent by a
            # current Envoy, had; the child must build its listeners as it did to take the
            # per-worker sockets.
            sock.sendto(hrwire.shutdown_admin_reply(self.start_time_s, True), sender)
        else:
            reply = reply_for(kind)
            if reply is None:
                return
            sock.sendto(reply, sender)
        self.requests_answered += 1

    def at_path(self) -> bool:
        """Whether the path is still this stand-in's (another process may have renamed its own
        over it, to answer in its place)."""
        try:
            return self._inode is not None and self.path.stat().st_ino == self._inode
        except FileNotFoundError:
            return False

    def _forward(self, sock: socket.socket, request: hrwire.Request | None, kind: int | None,
                 frame: bytes) -> bool:
        """Relay mode: True when the live parent got the request (it answers the child)."""
        assert self.relay_to is not None
        if (kind == hrwire.Req.PASS_LISTEN_SOCKET and request is not None
                and self.hold is not None
                and self.hold.fd_for(request.address, request.worker_index) is not None):
            return False  # ours to give: the held socket
        try:
            sock.sendto(frame, str(self.relay_to))
        except (ConnectionRefusedError, FileNotFoundError):
            self.parent_gone()  # nobody behind its socket: a stand-in from now on
            return False
        except OSError as exc:
            log.warning("relay %d: could not forward to the parent (%s); answering", self.epoch,
                        exc)
            return False
        self.forwarded += 1
        return True

    def parent_gone(self) -> None:
        """Relay mode ends: the parent exited; from now on, a stand-in."""
        link, self.relay_to = self.relay_to, None
        if link is not None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        link, self.relay_to = self.relay_to, None
        if link is not None:
            # The parent lives on (its child, a recovery, is gone): give its socket its own
            # name back, or its next child finds nothing there.
            try:
                os.rename(link, self.path)
                return
            except OSError as exc:
                log.error("relay %d: cannot give the parent's socket its name back (%s)",
                          self.epoch, exc)
        # Unlink only if the path is still ours (a later generation may reuse the name).
        with contextlib.suppress(FileNotFoundError):
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
