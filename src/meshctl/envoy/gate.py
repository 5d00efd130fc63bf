"""The xDS gate: holds a new generation short of LIVE until the supervisor has looked at it.

Why a gate: with listeners from a control plane, a new generation can reach LIVE with fewer
listeners than its parent (the control plane silent, down, or answering only part), and Envoy
drains the parent's listeners the moment the child is LIVE: the port refuses connections
(measured 2026-12-07: 1,532 to 4,764 refused requests per event). The child goes LIVE ~14 ms
after its listeners are ready, so no poll can step in between. The gate makes LIVE wait for
meshctl instead.

How: each generation started from a parent gets, through `--config-yaml` (merged by Envoy
into the user's bootstrap, which is never edited on disk), one extra static listener,
`meshctl_gate`, with `bind_to_port: false` (no socket, no port, no traffic), whose HTTP
connection manager takes its route config over RDS from this server, with
`initial_fetch_timeout: 0s`. Envoy's server initialization waits for every listener to warm,
so the generation cannot be LIVE before this server answers. The server is a gRPC service on
a Unix socket in the state dir (0600, like the hot-restart sockets), reached through one
static cluster, `meshctl_gate`. The supervisor compares the held generation's listeners,
routes and clusters with its parent's (`meshctl.envoy.xds`) and releases the gate only when
nothing is missing; it never has to answer to hold: gRPC connection failures do not end an
initial fetch (Envoy retries until the first answer), so a gate whose server is gone holds too.

A released name is answered at once and forever after, so a generation that reconnects (a
supervisor restart, a reconnect after an error) gets its route config again: the gRPC stream
of a LIVE generation must stay up, because every gRPC config stream in Envoy shares the
`control_plane.connected_state` gauge with the user's ADS stream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GATE_NAME = "meshctl_gate"
"""The name of the gate's listener, cluster and stats prefix in every gated generation."""
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_RDS_METHOD = "/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes"
# Never bound (bind_to_port: false); an address no user listener is likely to declare, because
# Envoy refuses two listeners with the same address even when one does not bind.
_GATE_ADDRESS = "127.255.255.254"
_GATE_PORT = 15099


def route_name(epoch: int) -> str:
    """The route config generation `epoch` waits for: one name per epoch, so that releasing one
    generation never releases another."""
    return f"{GATE_NAME}_{epoch}"


def config_yaml(socket_path: Path, epoch: int) -> str:
    """The `--config-yaml` that adds the gate to generation `epoch` (pure; unit-tested)."""
    return (
        "static_resources:\n"
        "  listeners:\n"
        f"  - name: {GATE_NAME}\n"
        "    address: {socket_address: "
        f"{{address: {_GATE_ADDRESS}, port_value: {_GATE_PORT}}}}}\n"
        "    bind_to_port: false\n"
        "    filter_chains:\n"
        "    - filters:\n"
        "      - name: envoy.filters.network.http_connection_manager\n"
        "        typed_config:\n"
        '          "@type": type.googleapis.com/envoy.extensions.filters.network.'
        "http_connection_manager.v3.HttpConnectionManager\n"
        f"          stat_prefix: {GATE_NAME}\n"
        "          rds:\n"
        f"            route_config_name: {route_name(epoch)}\n"
        "            config_source:\n"
        "              resource_api_version: V3\n"
        "              initial_fetch_timeout: 0s\n"
        "              api_config_source:\n"
        "                api_type: GRPC\n"
        "                transport_api_version: V3\n"
        f"                grpc_services: [{{envoy_grpc: {{cluster_name: {GATE_NAME}}}}}]\n"
        "          http_filters:\n"
        "          - name: envoy.filters.http.router\n"
        "            typed_config:\n"
        '              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.'
        "Router\n"
        "  clusters:\n"
        f"  - name: {GATE_NAME}\n"
        "    type: STATIC\n"
        "    connect_timeout: 1s\n"
        "    typed_extension_protocol_options:\n"
        "      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n"
        '        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.'
        "HttpProtocolOptions\n"
        "        explicit_http_config: {http2_protocol_options: {}}\n"
        "    load_assignment:\n"
        f"      cluster_name: {GATE_NAME}\n"
        "      endpoints:\n"
        "      - lb_endpoints:\n"
        f"        - endpoint: {{address: {{pipe: {{path: {json.dumps(str(socket_path))}}}}}}}\n"
    )


class GateServer:
    """The RDS server behind every gate of one supervisor (one Unix socket, many epochs).

    `hold(name)` before the generation starts, `release(name)` when the supervisor has seen
    enough; names never held are answered at once (a generation adopted after a restart)."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._lock = threading.Condition()
        self._held: set[str] = set()
        self._asked: set[str] = set()
        self._inboxes: set[queue.SimpleQueue[Any]] = set()
        self._server: Any = None

    def start(self) -> GateServer:
        # Imported here: only an xDS-driven Envoy needs the gate, and grpc costs the supervisor
        # ~15 MB of memory and a few threads.
        # No fork handlers: children are started with posix_spawn, and a handler run in a
        # child would act on threads that do not exist there.
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
        import grpc  # noqa: PLC0415

        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # our own socket of a previous run, in our 0700 dir
        server = grpc.server(ThreadPoolExecutor(max_workers=8, thread_name_prefix="gate"),
                             options=[("grpc.so_reuseport", 0)])
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=_request_from, response_serializer=bytes)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(
                "envoy.service.route.v3.RouteDiscoveryService", {"StreamRoutes": handler}),))
        old_umask = os.umask(0o177)  # the socket is created 0600: Envoy runs as we do
        try:
            server.add_insecure_port(f"unix:{self.socket_path}")
            server.start()
        finally:
            os.umask(old_umask)
        self._server = server
        log.info("xDS gate serving on %s", self.socket_path)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with self._lock:
                for inbox in self._inboxes:
                    inbox.put(None)
            server.stop(grace=None).wait(5)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def hold(self, name: str) -> None:
        with self._lock:
            self._held.add(name)
            self._asked.discard(name)

    def release(self, name: str) -> None:
        with self._lock:
            self._held.discard(name)
            for inbox in self._inboxes:
                inbox.put(_WAKE)  # the stream answers now, not at its next look

    def asked(self, name: str) -> bool:
        """Whether a generation has asked for `name`: its initialization reached the gate."""
        with self._lock:
            return name in self._asked

    def _stream(self, requests: Iterator[Any], context: Any) -> Iterator[bytes]:
        """One generation's RDS stream: answer each name it asks for once it is released."""
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with self._lock:
            self._inboxes.add(inbox)
        try:
            yield from self._answer(requests, context, inbox)
        finally:
            with self._lock:
                self._inboxes.discard(inbox)

    def _answer(self, requests: Iterator[Any], context: Any,
                inbox: queue.SimpleQueue[Any]) -> Iterator[bytes]:
        threading.Thread(target=_pump, args=(requests, inbox), daemon=True,
                         name="gate-reader").start()
        wanted: list[str] = []
        answered: set[str] = set()
        nonce = 0
        while context.is_active() and self._server is not None:
            try:
                req = inbox.get(timeout=0.5)  # and look at context.is_active() again
            except queue.Empty:
                req = _WAKE
            if req is None:
                return
            if req is not _WAKE:  # a request (a release or a timeout only looks again)
                wanted = list(req.resource_names)
                answered &= set(wanted)
                with self._lock:
                    self._asked.update(wanted)
            with self._lock:
                ready = [n for n in wanted if n not in self._held and n not in answered]
            if ready:
                nonce += 1
                answered.update(ready)
                yield _response(ready, nonce)


_WAKE = object()
"""Put in every stream's inbox by `release`."""


def _pump(requests: Iterator[Any], inbox: queue.SimpleQueue[Any]) -> None:
    with contextlib.suppress(Exception):  # the stream ends with an RpcError when cancelled
        for req in requests:
            inbox.put(req)
    inbox.put(None)


def _request_from(data: bytes) -> Any:
    from envoy.service.discovery.v3 import discovery_pb2  # noqa: PLC0415

    return discovery_pb2.DiscoveryRequest.FromString(data)


def _response(names: list[str], nonce: int) -> bytes:
    from envoy.config.route.v3 import route_pb2  # noqa: PLC0415
    from envoy.service.discovery.v3 import discovery_pb2  # noqa: PLC0415

    resp = discovery_pb2.DiscoveryResponse(version_info="meshctl-1", type_url=ROUTE_TYPE,
                                           nonce=str(nonce))
    for name in names:
        resp.resources.add().Pack(route_pb2.RouteConfiguration(name=name))
    data: bytes = resp.SerializeToString()
    return data
