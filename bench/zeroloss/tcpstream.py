"""One long-lived TCP stream through Envoy's tcp_proxy (to the echo upstream), pinged every
`interval_s` from before the upgrade to after it: does it survive the handover, and when and
how does it end?

A TCP stream carries no protocol Envoy could use to ask the client to leave (HTTP/1.1 has
`connection: close`, HTTP/2 has GOAWAY), so a draining generation keeps it until it exits:
with meshctl, at the end of the drain window (`drain_max_s`, a forced close); with the naive
stop, at once. When it is cut, the client connects again (what a real client would do) and the
gap is recorded.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StreamConnection:
    opened_s: float
    """Monotonic time the connection was established."""
    closed_s: float | None = None
    pings_ok: int = 0
    end: str | None = None
    """How it ended: eof, reset, timeout, mismatch, or None if it lasted to the end."""


@dataclass
class StreamResult:
    connections: list[StreamConnection] = field(default_factory=list)
    connect_failures: dict[str, int] = field(default_factory=dict)
    pings_sent: int = 0
    pings_ok: int = 0
    rtts_s: list[tuple[float, float]] = field(default_factory=list)
    """(monotonic send time, round-trip seconds) of every answered ping."""

    def to_json(self, load_start: float) -> dict[str, Any]:
        def rel(t: float | None) -> float | None:
            return None if t is None else round(t - load_start, 4)

        return {
            "pings_sent": self.pings_sent, "pings_ok": self.pings_ok,
            "pings_lost": self.pings_sent - self.pings_ok,
            "connect_failures": dict(self.connect_failures),
            "connections": [{"opened_s": rel(c.opened_s), "closed_s": rel(c.closed_s),
                             "pings_ok": c.pings_ok, "end": c.end}
                            for c in self.connections],
            "max_rtt_ms": round(max((r for _, r in self.rtts_s), default=0.0) * 1000, 3),
        }


class TcpStream:
    """A thread that keeps one TCP connection to `port` and pings it."""

    def __init__(self, port: int, *, interval_s: float = 0.1, timeout_s: float = 2.0,
                 host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.result = StreamResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="tcp-stream")

    def start(self) -> TcpStream:
        self._thread.start()
        return self

    def stop(self) -> StreamResult:
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 5)
        return self.result

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            except OSError as exc:
                name = ("refused" if isinstance(exc, ConnectionRefusedError)
                        else type(exc).__name__)
                failures = self.result.connect_failures
                failures[name] = failures.get(name, 0) + 1
                self._stop.wait(0.02)
                continue
            conn = StreamConnection(opened_s=time.monotonic())
            self.result.connections.append(conn)
            with sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while not self._stop.is_set():
                    seq += 1
                    payload = struct.pack("!Q", seq) * 2
                    sent = time.monotonic()
                    self.result.pings_sent += 1
                    end = self._ping(sock, payload)
                    if end is not None:
                        conn.end, conn.closed_s = end, time.monotonic()
                        break
                    rtt = time.monotonic() - sent
                    self.result.pings_ok += 1
                    conn.pings_ok += 1
                    self.result.rtts_s.append((sent, rtt))
                    self._stop.wait(max(0.0, self.interval_s - rtt))
                else:
                    conn.closed_s = time.monotonic()

    @staticmethod
    def _ping(sock: socket.socket, payload: bytes) -> str | None:
        """None if the payload came back, else how the stream ended."""
        try:
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                data = sock.recv(len(payload) - len(got))
                if not data:
                    return "eof"
                got += data
        except TimeoutError:
            return "timeout"
        except ConnectionResetError:
            return "reset"
        except BrokenPipeError:
            return "eof"
        except OSError as exc:
            return type(exc).__name__
        if got != payload:
            with contextlib.suppress(OSError):
                sock.close()
            return "mismatch"
        return None
