"""A small HTTP/1.1 load client that accounts for every request, by outcome and by generation.

Each worker thread sends GET requests back to back (closed loop), either on one keep-alive
connection or on a new connection per request. Every request ends in exactly one bucket:
  ok           a 2xx response was read completely
  http_error   a response with another status
  failed       no response: refused, reset, timeout, closed mid-response
A keep-alive connection that the server had already closed when we reused it (EOF or reset
before any response byte, the classic keep-alive race that browsers and HTTP libraries retry
transparently) is retried once on a new connection and counted in `reused_retried`; the request
itself is then counted by the retry's outcome. The `x-meshctl-epoch` response header says which
Envoy generation served each request.

Every failure is also kept as a `Failure` (when its connection was opened, when it failed,
how): whoever killed a process can then tell the requests that were in flight on it (their
connection opened before the kill: they cannot be saved) from the ones that should have been
served (a connection opened after it, or refused).
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Failure:
    opened_mono: float
    """When the request's connection was opened (its first request was sent)."""
    failed_mono: float
    error: str
    """The exception's type name: ConnectionRefusedError, ConnectionResetError, ..."""
    reused: bool
    """On a keep-alive connection that had served a request before."""


@dataclass
class LoadStats:
    ok: int = 0
    http_error: int = 0
    failed: int = 0
    reused_retried: int = 0
    by_epoch: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.http_error + self.failed

    def merge(self, other: LoadStats) -> None:
        self.ok += other.ok
        self.http_error += other.http_error
        self.failed += other.failed
        self.reused_retried += other.reused_retried
        self.by_epoch.update(other.by_epoch)
        self.errors.update(other.errors)
        self.failures.extend(other.failures)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.total, "ok": self.ok, "http_error": self.http_error,
            "failed": self.failed, "reused_retried": self.reused_retried,
            "by_epoch": dict(sorted(self.by_epoch.items())), "errors": dict(self.errors),
        }


class _StaleConnection(Exception):
    """The server closed a reused keep-alive connection before answering."""


class LoadGen:
    def __init__(self, host: str, port: int, keepalive_workers: int = 4,
                 new_conn_workers: int = 1, timeout_s: float = 10.0, path: str = "/",
                 rate_limit_s: float = 0.0) -> None:
        self.host, self.port, self.path = host, port, path
        self.timeout_s = timeout_s
        self.rate_limit_s = rate_limit_s
        self._stop = threading.Event()
        self._stats: list[LoadStats] = []
        self._threads = [
            threading.Thread(target=self._worker, args=(True,), daemon=True,
                             name=f"load-ka-{i}")
            for i in range(keepalive_workers)
        ] + [
            threading.Thread(target=self._worker, args=(False,), daemon=True,
                             name=f"load-new-{i}")
            for i in range(new_conn_workers)
        ]

    def start(self) -> LoadGen:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)
        total = LoadStats()
        for s in self._stats:
            total.merge(s)
        return total

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _worker(self, keepalive: bool) -> None:
        stats = LoadStats()
        self._stats.append(stats)
        conn: http.client.HTTPConnection | None = None
        opened = time.monotonic()
        while not self._stop.is_set():
            if conn is None or not keepalive:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            if conn.sock is None:
                opened = time.monotonic()
            reused = keepalive and conn.sock is not None
            try:
                try:
                    self._one(conn, stats, reused=reused)
                except _StaleConnection:
                    stats.reused_retried += 1
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port,
                                                      timeout=self.timeout_s)
                    opened, reused = time.monotonic(), False
                    self._one(conn, stats, reused=False)
            except (OSError, http.client.HTTPException) as exc:
                stats.failed += 1
                stats.errors[type(exc).__name__] += 1
                stats.failures.append(Failure(opened, time.monotonic(), type(exc).__name__,
                                              reused))
                conn.close()
                conn = None
            if not keepalive and conn is not None:
                conn.close()
            if self.rate_limit_s:
                time.sleep(self.rate_limit_s)
        if conn is not None:
            conn.close()

    def _one(self, conn: http.client.HTTPConnection, stats: LoadStats, reused: bool) -> None:
        try:
            conn.request("GET", self.path)
            resp = conn.getresponse()
        except (TimeoutError, http.client.RemoteDisconnected, ConnectionResetError,
                BrokenPipeError) as exc:
            # A keep-alive connection the server closed while idle: a client retries a GET on
            # a fresh connection (RFC 9110 9.2.2). Counted apart, as reused_retried.
            if reused and not isinstance(exc, TimeoutError):
                raise _StaleConnection from exc
            raise
        resp.read()
        stats.by_epoch[resp.getheader("x-meshctl-epoch", "?")] += 1
        if 200 <= resp.status < 300:
            stats.ok += 1
        else:
            stats.http_error += 1
        if resp.will_close:
            conn.close()
