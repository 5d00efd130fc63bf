"""Holding the live generation's listening sockets, so that an Envoy crash refuses nothing.

When an Envoy process dies, the kernel closes its fds; a listening socket whose last fd
closes is gone, and new connections to its port are refused until a new process binds it.
If another process keeps a duplicate of the socket open, it stays listening: the kernel
completes handshakes into its backlog (UDP datagrams into its receive buffer) and the next
process that takes the socket serves them. HAProxy's master and systemd's socket activation do
this for their workers; this module does it for Envoy, with Envoy's own hot-restart protocol
as the carrier, in both directions:

- **taking** (`SocketHold.take`): meshctl poses as the live generation's next child for a
  moment. It binds the child's hot-restart socket, sends one `PassListenSocket` request per
  listener address and worker, and receives the very sockets (SCM_RIGHTS: the same sockets,
  not new ones in the same reuse_port group). A parent answers these requests without
  changing any state of its own (hot_restarting_parent.cc: `getListenSocketsForChild` only
  looks the socket up).
- **giving** (`meshctl.envoy.standin.ParentStandIn` with a hold): after a crash, the restarted
  generation hot-restarts from a stand-in at the dead generation's parent socket, which
  answers each `PassListenSocket` from this hold, so Envoy adopts the held socket and its
  backlog instead of binding a new one.

Neither needs a capability, ptrace or a seccomp exception: Unix datagram sockets and
SCM_RIGHTS, as the non-root proxy user of a pod.

A held socket must never outlive the last Envoy that accepts on it: with reuse_port, a held
socket nobody accepts on keeps receiving its share of new connections, which then hang. So a
hold is re-taken whenever the set of listeners may have changed, and keeps only the sockets
(by inode) the live generation still has; it is closed when meshctl gives up or stops.
"""

from __future__ import annotations

import array
import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from meshctl.envoy import hrwire

log = logging.getLogger(__name__)


class HoldError(Exception):
    """The live generation could not be asked for its sockets (it is gone, or did not answer)."""


@dataclass(frozen=True, order=True)
class ListenKey:
    """A listening address as both sides of the protocol name it, normalized."""

    proto: str
    """tcp or udp"""
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.proto}://{host}:{self.port}"


def parse_url(url: str) -> ListenKey | None:
    """`tcp://127.0.0.1:10000`, `udp://[::]:53`: what Envoy sends in PassListenSocket."""
    proto, sep, rest = url.partition("://")
    if not sep or proto not in ("tcp", "udp"):
        return None
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        return None
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    return ListenKey(proto, str(ip), int(port))


@dataclass
class _Held:
    sock: socket.socket
    inode: int
    keys: set[tuple[ListenKey, int]]
    pending_until: float | None = None
    """Set while a generation restarted after a crash has not asked for this socket yet (an
    xDS-driven one asks only once LDS answers): kept until then, never longer."""


@dataclass(frozen=True)
class TakeResult:
    taken: int
    """Sockets new to the hold."""
    kept: int
    closed: int
    """Held sockets the live generation no longer has (a listener removed or rebound)."""


def _recv_with_fds(sock: socket.socket, timeout_s: float) -> tuple[bytes, list[int]]:
    sock.settimeout(timeout_s)
    fds = array.array("i")
    msg, ancdata, _, _ = sock.recvmsg(hrwire.MAX_DATAGRAM,
                                      socket.CMSG_SPACE(4 * fds.itemsize),
                                      socket.MSG_CMSG_CLOEXEC)  # never inherited by a child
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % fds.itemsize
            fds.frombytes(data[:usable])
    return msg, list(fds)


class SocketHold:
    """Duplicates of the live generation's listening sockets, by address and worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the stand-in's thread reads while the loop re-takes
        self._by_inode: dict[int, _Held] = {}
        self.taken_mono: float | None = None
        self.given = 0
        """Sockets handed to restarted generations, in all."""

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_inode)

    def addresses(self) -> list[ListenKey]:
        with self._lock:
            return sorted({k for h in self._by_inode.values() for k, _ in h.keys})

    def take(self, parent_socket: Path, child_socket: Path, urls: Iterable[str], workers: int,
             *, now: float, timeout_s: float = 1.0) -> TakeResult:
        """Ask the generation listening at `parent_socket` for every socket of `urls`, posing
        as its child at `child_socket` (the path its replies go to: the caller makes sure no
        real child is there), and keep exactly those, plus the ones still pending for it
        (`expect`) until their deadline. Raises HoldError, leaving the hold as it was, if the
        generation does not answer."""
        fresh: dict[int, _Held] = {}
        try:
            self._ask(parent_socket, child_socket, urls, workers, timeout_s, fresh)
        except BaseException:
            for held in fresh.values():
                held.sock.close()
            raise
        with self._lock:
            kept = closed = 0
            for inode, held in list(self._by_inode.items()):
                if inode in fresh:  # the same socket: keep our duplicate, drop the new one
                    fresh[inode].sock.close()
                    fresh[inode].sock = held.sock
                    kept += 1
                elif held.pending_until is not None and now < held.pending_until:
                    fresh[inode] = held  # the restarted generation has not asked for it yet
                    kept += 1
                else:
                    held.sock.close()
                    closed += 1
            self._by_inode = fresh
            self.taken_mono = now
            return TakeResult(taken=len(fresh) - kept, kept=kept, closed=closed)

    def _ask(self, parent_socket: Path, child_socket: Path, urls: Iterable[str], workers: int,
             timeout_s: float, into: dict[int, _Held]) -> None:
        with contextlib.suppress(FileNotFoundError):
            child_socket.unlink()  # a dead generation's file (Envoy leaves them behind)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inode: int | None = None
        try:
            sock.bind(str(child_socket))
            os.chmod(child_socket, 0o600)
            inode = child_socket.stat().st_ino
            for url in urls:
                key = parse_url(url)
                if key is None:
                    continue
                for worker in range(max(1, workers)):
                    fd = self._ask_one(sock, parent_socket, url, worker, timeout_s)
                    if fd is None:
                        break  # not a socket it binds, or no such worker: ask no further
                    ino = os.fstat(fd).st_ino
                    if ino in into:
                        os.close(fd)  # one socket shared by every worker (no reuse_port)
                    else:
                        into[ino] = _Held(socket.socket(fileno=fd), ino, set())
                    into[ino].keys.add((key, worker))
        finally:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                if inode is not None and child_socket.stat().st_ino == inode:
                    child_socket.unlink()

    @staticmethod
    def _ask_one(sock: socket.socket, parent: Path, url: str, worker: int,
                 timeout_s: float) -> int | None:
        try:
            sock.sendto(hrwire.pass_listen_socket_request(url, worker), str(parent))
        except OSError as exc:
            raise HoldError(f"cannot reach the live generation at {parent}: {exc}") from exc
        try:
            msg, fds = _recv_with_fds(sock, timeout_s)
        except TimeoutError:
            _drain_late_replies(sock, parent, timeout_s)
            raise HoldError(f"the live generation did not answer for {url} within "
                            f"{timeout_s:g}s") from None
        try:
            reply = hrwire.parse_reply(msg)
        except hrwire.WireError as exc:
            for fd in fds:
                os.close(fd)
            raise HoldError(f"unreadable answer for {url}: {exc}") from exc
        for extra in fds[1:]:
            os.close(extra)
        if reply.kind != 1 or reply.fd == -1 or not fds:
            for fd in fds[:1]:
                os.close(fd)
            return None
        return fds[0]

    def put(self, sock: socket.socket, url: str, worker: int = 0) -> None:
        """Hold a socket this process has (the tests' parent; a taken one comes from `take`)."""
        key = parse_url(url)
        if key is None:
            raise ValueError(f"not a listening address: {url!r}")
        inode = os.fstat(sock.fileno()).st_ino
        with self._lock:
            held = self._by_inode.setdefault(inode, _Held(sock, inode, set()))
            held.keys.add((key, worker))

    def expect(self, until: float) -> None:
        """A generation restarts from the hold: every socket is pending for it until `until`
        (see `_Held.pending_until`)."""
        with self._lock:
            for held in self._by_inode.values():
                held.pending_until = until

    def pending(self) -> int:
        with self._lock:
            return sum(1 for h in self._by_inode.values() if h.pending_until is not None)

    def fd_for(self, address: str, worker: int) -> int | None:
        """The held socket for a restarted generation's PassListenSocket, or None."""
        key = parse_url(address)
        if key is None:
            return None
        with self._lock:
            for held in self._by_inode.values():
                if (key, worker) in held.keys:
                    return held.sock.fileno()
        return None

    def send_fd(self, sock: socket.socket, address: str, worker: int, to: str) -> bool:
        """Answer one PassListenSocket on `sock`: the held socket as SCM_RIGHTS, or fd -1.
        Under the lock, so that a concurrent `close_all` cannot close the fd mid-send."""
        key = parse_url(address)
        with self._lock:
            held = None
            if key is not None:
                held = next((h for h in self._by_inode.values() if (key, worker) in h.keys),
                            None)
            if held is None:
                sock.sendto(hrwire.pass_listen_socket_reply(-1), to)
                return False
            held.pending_until = None  # the restarted generation has it now
            fd = held.sock.fileno()
            self.given += 1
            sock.sendmsg([hrwire.pass_listen_socket_reply(fd)],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
                         0, to)
            return True

    def close_all(self) -> int:
        """Close every held socket: the backlog dies with it (clients are refused or reset
        instead of hanging in a queue nobody will accept)."""
        with self._lock:
            n = len(self._by_inode)
            for held in self._by_inode.values():
                held.sock.close()
            self._by_inode = {}
            self.taken_mono = None
        return n


def _drain_late_replies(sock: socket.socket, parent: Path, timeout_s: float) -> None:
    """After a timeout, a reply may still come: it must not reach the next process bound at
    this path (a real child would take it for the answer to its own request). Envoy answers
    in order, so once the answer to an empty request arrives, nothing else is on its way."""
    with contextlib.suppress(OSError):
        sock.sendto(hrwire.empty_request(), str(parent))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            msg, fds = _recv_with_fds(sock, left)
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(hrwire.WireError):
                if hrwire.parse_reply(msg).didnt_recognize:
                    return
