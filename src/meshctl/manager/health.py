"""The health port: the HTTP endpoints Kubernetes probes and Prometheus scrape (like Istio's
pilot-agent on 15021).

  GET|HEAD /healthz/ready   200 "ready", or 503 "not ready: <reason>"  (readinessProbe)
  GET|HEAD /healthz/live    200 "alive" while this server runs         (livenessProbe)
  GET|HEAD /metrics         the `Metrics` registry, Prometheus text format
  anything else             404

Liveness is the supervisor's own: Envoy's health is in readiness, so that a slow or restarting
Envoy takes the pod out of the Service instead of getting the container killed mid-upgrade.

The server runs in its own threads and never acts on the supervisor: `ready()` is called on
every request from a server thread, so it must be cheap and only read a snapshot the main loop
publishes (never poll Envoy, never take the main loop's locks).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from meshctl import errors
from meshctl.manager.metrics import Metrics

log = logging.getLogger(__name__)

_TEXT = "text/plain; charset=utf-8"
_POLL_S = 0.1
_REQUEST_TIMEOUT_S = 5.0  # a client that stalls mid-request must not hold a thread forever

ReadyCheck = Callable[[], tuple[bool, str]]
"""Returns (ready, reason); the reason is shown when not ready. Must only read a snapshot."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck probe connection must not delay the supervisor's exit

    def __init__(self, address: tuple[str, int], ready: ReadyCheck, metrics: Metrics) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.ready = ready
        self.metrics = metrics
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves socket.getfqdn(host), a reverse DNS lookup that can
        # take seconds in a pod without DNS; the name is only used for CGI, which we do not do.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; a client that hung up is not our error.
        log.debug("health: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = _REQUEST_TIMEOUT_S
    server_version = "meshctl"
    sys_version = ""

    def do_GET(self) -> None:
        self._respond(head=False)

    def do_HEAD(self) -> None:
        self._respond(head=True)

    def _respond(self, head: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz/ready":
            ready, reason = self._ready()
            if ready:
                self._send(200, b"ready\n", _TEXT, head)
            else:
                self._send(503, f"not ready: {reason}\n".encode(), _TEXT, head)
        elif path == "/healthz/live":
            self._send(200, b"alive\n", _TEXT, head)
        elif path == "/metrics":
            body, content_type = self.server.metrics.render()
            self._send(200, body, content_type, head)
        else:
            self._send(404, b"not found\n", _TEXT, head)

    def _ready(self) -> tuple[bool, str]:
        try:
            ready, reason = self.server.ready()
        except Exception as exc:  # a broken check means not ready, never a dead health port
            log.warning("health: the ready check failed: %s: %s", type(exc).__name__, exc)
            return False, "internal error"
        # The reason goes into a one-line body that kubelet shows in events.
        return bool(ready), " ".join(str(reason).split()) or "unknown"

    def _send(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Kubernetes probes every few seconds: one stderr line each would bury the real log.
        log.debug("health: %s " + format, self.address_string(), *args)


class HealthServer:
    """The health port in a daemon thread: `start()`, then `close()`."""

    def __init__(self, host: str, port: int, ready: ReadyCheck, metrics: Metrics) -> None:
        self.host = host
        self.port = port
        """The port asked for; after `start()`, the port bound (useful when asked for 0)."""
        self._ready = ready
        self._metrics = metrics
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve. Raises BadInput if the address cannot be bound (in use, bad host)."""
        if self._server is not None:
            raise RuntimeError("the health server is already started")
        try:
            server = _Server((self.host, self.port), self._ready, self._metrics)
        except (OSError, OverflowError) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise errors.BadInput(
                f"health port {self.host}:{self.port} cannot be bound: {detail}") from exc
        self.port = server.server_port
        self._server = server
        # shutdown() waits up to one poll interval: short, so that stopping stays prompt.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": _POLL_S}, name="health",
            daemon=True)
        self._thread.start()
        log.info("health: serving /healthz/ready, /healthz/live and /metrics on %s:%d",
                 self.host, self.port)

    def close(self) -> None:
        """Stop serving and release the port. Safe to call twice, or without `start()`."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()  # waits for serve_forever to return
        thread.join(timeout=3)
        server.server_close()
