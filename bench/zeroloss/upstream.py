"""The upstream behind Envoy: an HTTP/1.1 server (asyncio) that waits a configurable delay before
it answers, and a TCP echo server for the long-lived stream.

The delay makes requests span a handover: a request Envoy forwarded just before an upgrade is
still in flight on the old generation when the new one takes the listeners. Each request may set
its own delay with `?delay_ms=N`; `--delay-ms` is the default.

One event loop per process (Envoy keeps a pool of upstream connections, one request at a time on
each for HTTP/1.1), a minimal parser (by hand, not h11: Envoy sends it bodiless GETs only, and
h11 took 44.2 us per request against 3.9 us by hand on this machine, 2026-12-07, next to the
87 us the upstream spends per request in all: docs/latency.md), and `processes` copies of the
server on one port (SO_REUSEPORT) so that the Python server is not the bottleneck of the
benchmark. Each process counts what it received and served; `Upstream.stats()` adds them up, so
that the client's count of responses can be checked against the server's.

Run as a process: `python -m zeroloss.upstream --port P [--echo-port Q] [--delay-ms D]`. It
prints `ready` when it listens, answers `stats` on stdin with one JSON line, and exits when its
stdin closes (so it never outlives the benchmark that started it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import parse_qs, urlsplit

_BODY = b"ok\n"
_RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: "
             + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)
_BAD = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_MAX_HEAD = 64 * 1024


@dataclass
class Counts:
    received: int = 0
    """Requests read completely (the head; a GET has no body)."""
    served: int = 0
    """Responses written completely."""
    connections: int = 0
    """Connections accepted."""

    def add(self, other: Counts) -> None:
        self.received += other.received
        self.served += other.served
        self.connections += other.connections

    def to_json(self) -> dict[str, int]:
        return {"received": self.received, "served": self.served,
                "connections": self.connections}


def request_delay_s(target: bytes, default_s: float) -> float:
    """The delay a request asks for (`?delay_ms=N`), else the server's default."""
    query = urlsplit(target.decode("latin-1")).query
    if not query:
        return default_s
    values = parse_qs(query).get("delay_ms")
    if not values:
        return default_s
    try:
        return max(0.0, float(values[0]) / 1000.0)
    except ValueError:
        return default_s


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            with contextlib.suppress(ValueError):
                return int(value.strip())
    return 0


class HttpServer:
    """The HTTP server of one process: an asyncio event loop in a thread of its own.

    Not a thread per connection: at an upgrade's handover every keep-alive client reconnects
    at once and the new Envoy opens its upstream connections for them, and a thread per
    connection then made the accept thread wait for the GIL tens of times in 60 ms (perf
    sched, off-CPU stacks in futex_wait while Envoy's workers idled in epoll_wait): a p99
    spike of the benchmark's own upstream, in both arms. One loop accepts a burst in one
    go and answers each request from a callback."""

    def __init__(self, port: int = 0, *, delay_s: float = 0.0, reuse_port: bool = False,
                 host: str = "127.0.0.1") -> None:
        self.delay_s = delay_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])
        self.counts = Counts()
        self.loop = asyncio.new_event_loop()
        self._transports: set[asyncio.Transport] = set()
        self._server: asyncio.AbstractServer | None = None
        self._error: BaseException | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="http-loop")

    def start(self) -> HttpServer:
        self._thread.start()
        if not self._started.wait(10) or self._server is None:
            raise RuntimeError(f"the upstream's loop did not start: {self._error!r}")
        return self

    def snapshot(self) -> Counts:
        # The counters change on the loop's thread only; ints are read atomically.
        return Counts(self.counts.received, self.counts.served, self.counts.connections)

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._shutdown)
            self._thread.join(timeout=5)
        else:
            self.sock.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self._server = self.loop.run_until_complete(self.loop.create_server(
                lambda: _HttpConnection(self), sock=self.sock, backlog=1024))
        except OSError as exc:
            self._error = exc
        finally:
            self._started.set()
        if self._server is None:
            self.loop.close()
            return
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.abort()  # closes its socket in a callback: stop after those
        self.loop.call_soon(self.loop.stop)


class _HttpConnection(asyncio.Protocol):
    """One connection: requests parsed as they come, each answered after its delay. Envoy
    sends one request at a time on an HTTP/1.1 upstream connection, so answers keep the
    order of the requests."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.counts.connections += 1
        self.server._transports.add(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.server._transports.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    self._bad()
                return
            head = bytes(self.buf[:end])
            body = _content_length(head)
            if len(self.buf) < end + 4 + body:
                return
            del self.buf[:end + 4 + body]
            self.server.counts.received += 1
            parts = head.split(b" ", 2)
            delay = request_delay_s(parts[1], self.server.delay_s) if len(parts) > 1 else 0.0
            if delay:
                self.server.loop.call_later(delay, self._respond)
            else:
                self._respond()

    def _respond(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(_RESPONSE)
        self.server.counts.served += 1

    def _bad(self) -> None:
        assert self.transport is not None
        self.transport.write(_BAD)
        self.transport.close()


class EchoServer:
    """A TCP echo server: the upstream of the long-lived stream (Envoy's tcp_proxy)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, port))
        self.port = int(self.sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="echo-accept")

    def start(self) -> EchoServer:
        self._thread.start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)
        conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


# --------------------------------------------------------------------------- as processes


class Upstream:
    """`processes` upstream processes sharing one HTTP port (SO_REUSEPORT); the first one also
    runs the echo server. Started from the benchmark; stopped by closing their stdin."""

    def __init__(self, *, processes: int = 2, delay_ms: float = 0.0,
                 bench_dir: Path | None = None, prefix: Sequence[str] = ()) -> None:
        self.processes = processes
        self.prefix = list(prefix)
        """Put before each process's argv (`taskset -c CPUS`: see `zeroloss.cpus`)."""
        self.delay_ms = delay_ms
        self.bench_dir = bench_dir or Path(__file__).resolve().parents[1]
        self.port = 0
        self.echo_port = 0
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, timeout_s: float = 20.0) -> Upstream:
        # The port is reserved by a socket that keeps it while the children bind it too.
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        self.port = int(holder.getsockname()[1])
        echo = socket.socket()
        echo.bind(("127.0.0.1", 0))
        self.echo_port = int(echo.getsockname()[1])
        echo.close()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(self.bench_dir), *filter(None, [os.environ.get("PYTHONPATH")])])}
        try:
            for i in range(self.processes):
                argv = [*self.prefix, sys.executable, "-m", "zeroloss.upstream", "--port",
                        str(self.port), "--delay-ms", f"{self.delay_ms:g}"]
                if i == 0:
                    argv += ["--echo-port", str(self.echo_port)]
                self.procs.append(subprocess.Popen(argv, stdin=subprocess.PIPE,
                                                   stdout=subprocess.PIPE, text=True, env=env))
            deadline = time.monotonic() + timeout_s
            for proc in self.procs:
                line = _read_line(proc, deadline)
                if line != "ready":
                    raise RuntimeError(f"upstream process {proc.pid} did not start: {line!r}")
        except BaseException:
            self.stop()
            raise
        finally:
            holder.close()
        return self

    def stats(self) -> Counts:
        total = Counts()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("stats\n")
            proc.stdin.flush()
            line = _read_line(proc, time.monotonic() + 10)
            data = json.loads(line)
            total.add(Counts(data["received"], data["served"], data["connections"]))
        return total

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.procs = []

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """One line of a child's stdout, or an error at the deadline (a thread does the blocking
    read: a pipe has no timeout)."""
    out: list[str] = []
    assert proc.stdout is not None
    stdout: IO[str] = proc.stdout
    reader = threading.Thread(target=lambda: out.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    if not out:
        raise RuntimeError(f"process {proc.pid} did not answer in time")
    return out[0].strip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="meshctl benchmark upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--echo-port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    server = HttpServer(args.port, delay_s=args.delay_ms / 1000.0, reuse_port=True).start()
    echo = EchoServer(args.echo_port).start() if args.echo_port else None
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                data: dict[str, Any] = server.snapshot().to_json()
                print(json.dumps(data), flush=True)
    finally:
        server.close()
        if echo is not None:
            echo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
