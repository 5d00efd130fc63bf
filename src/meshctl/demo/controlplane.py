"""A real, small xDS control plane for the demo and the tests: ADS, State of the World, v3.

It owns three things and nothing else:

- `mesh_snapshot`: one version of a mesh's config as Envoy protos (listeners with an HTTP
  connection manager on RDS, route configs, EDS clusters, their load assignments);
- `bootstrap_yaml`: the Envoy bootstrap that points a proxy at it over ADS (Istio-style:
  LDS and CDS from ADS, RDS and EDS named from them);
- `ControlPlane`: a grpcio server of `AggregatedDiscoveryService.StreamAggregatedResources`
  that serves a `Snapshot` to every stream, and can be told to misbehave the way a real
  control plane does (go silent, answer only some types, go down and come back on the same
  port) so that tests can see what Envoy does then.

Protocol (SotW): LDS and CDS answer every resource of the type (wildcard); RDS and EDS answer
the known resources among the request's `resource_names`. A response carries the snapshot
version and a fresh nonce. A stream is answered for a type only when what it would get
differs from what it was last sent (new version, or a new set of names): so an ACK, which
repeats the last nonce and version, is never answered (no answer loops), and a NACK is
counted and left unanswered until the snapshot changes.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, duration_pb2

_PREFIX = "type.googleapis.com/"
LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"

# LDS and CDS are wildcard subscriptions in SotW; RDS and EDS name what they want.
_NAMED = frozenset({ROUTE, ENDPOINT})

# ~8 concurrent streams each hold one pool thread (the response generator) for their whole
# life; the headroom keeps one more connect from waiting on a busy pool.
_POOL_THREADS = 16
# How often a response generator looks at `context.is_active()` besides its wake-up sentinel:
# the bound on how long a stream can outlive its RPC if a callback were ever missed.
_POLL_S = 0.25
_JOIN_S = 5.0

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """One version of the mesh config, all four types at once (SotW serves them together)."""

    version: str
    listeners: tuple[Any, ...]
    routes: tuple[Any, ...]
    clusters: tuple[Any, ...]
    endpoints: tuple[Any, ...]

    def resources(self, type_url: str) -> dict[str, Any]:
        """The resources of one type by name (a ClusterLoadAssignment's is its cluster_name)."""
        if type_url == LISTENER:
            return {r.name: r for r in self.listeners}
        if type_url == ROUTE:
            return {r.name: r for r in self.routes}
        if type_url == CLUSTER:
            return {r.name: r for r in self.clusters}
        if type_url == ENDPOINT:
            return {r.cluster_name: r for r in self.endpoints}
        return {}


def _ads_source() -> Any:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3)


def _socket(address: str, port: int) -> Any:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=address, port_value=port))


def _packed(message: Any) -> Any:
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


def _listener(port: int, address: str) -> Any:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=f"http_{port}",
        rds=hcm_pb2.Rds(config_source=_ads_source(), route_config_name=f"route_{port}"),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router",
                                         typed_config=_packed(router_pb2.Router()))],
    )
    return listener_pb2.Listener(
        name=f"listener_{port}",
        address=_socket(address, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager",
                                           typed_config=_packed(hcm))])],
    )


def _route(port: int, version: str, header: str) -> Any:
    return route_pb2.RouteConfiguration(
        name=f"route_{port}",
        virtual_hosts=[route_components_pb2.VirtualHost(
            name="all", domains=["*"],
            routes=[route_components_pb2.Route(
                match=route_components_pb2.RouteMatch(prefix="/"),
                route=route_components_pb2.RouteAction(cluster="cluster_0"))])],
        # The version in every response: a client sees which snapshot served it.
        response_headers_to_add=[base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=header, value=version))],
    )


def mesh_snapshot(version: str, listener_ports: Sequence[int], upstream_port: int, *,
                  clusters: int = 1, endpoints_per_cluster: int = 1,
                  body_header: str = "x-cp-version",
                  listener_address: str = "127.0.0.1") -> Snapshot:
    """Listener i is named f"listener_{port}" on listener_address:port, an HTTP connection
    manager with RDS route config f"route_{port}" (config_source ads, resource_api_version V3).
    Each route config has one virtual host "*" routing prefix "/" to cluster "cluster_0" and
    adds a response header body_header: version. Clusters "cluster_0".."cluster_{n-1}" are EDS
    (eds_config: ads), connect_timeout 1s; each ClusterLoadAssignment has
    endpoints_per_cluster endpoints on upstream_port, each on its own loopback address."""
    if clusters < 1:
        raise ValueError("the routes need cluster_0: clusters must be at least 1")
    names = [f"cluster_{i}" for i in range(clusters)]
    cluster_msgs = tuple(
        cluster_pb2.Cluster(
            name=name, type=cluster_pb2.Cluster.DiscoveryType.EDS,
            eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads_source()),
            connect_timeout=duration_pb2.Duration(seconds=1))
        for name in names)
    # Envoy merges the endpoints of one address into one host: endpoint j gets its own
    # loopback address, 127.0.(j // 250).(j % 250 + 1), all on the upstream's port (an
    # upstream bound to 0.0.0.0 answers on every one; endpoint 0 is 127.0.0.1).
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=_socket(
                f"127.0.{j // 250}.{j % 250 + 1}", upstream_port)))
        for j in range(endpoints_per_cluster)]
    assignments = tuple(
        endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)])
        for name in names)
    return Snapshot(
        version=version,
        listeners=tuple(_listener(p, listener_address) for p in listener_ports),
        routes=tuple(_route(p, version, body_header) for p in listener_ports),
        clusters=cluster_msgs,
        endpoints=assignments,
    )


def bootstrap_yaml(*, node_id: str, xds_port: int, admin_port: int,
                   initial_fetch_timeout_s: float | None = 3.0) -> str:
    """An Envoy bootstrap in YAML: node, admin on 127.0.0.1:admin_port, a static cluster "xds"
    (HTTP/2, 127.0.0.1:xds_port), dynamic_resources with ads_config (GRPC, V3, envoy_grpc xds),
    lds_config {ads: {}, resource_api_version: V3} and cds_config likewise, each with
    initial_fetch_timeout (omitted when None: Envoy's default 15 s). Istio-style."""
    fetch = ("" if initial_fetch_timeout_s is None
             else f"\n    initial_fetch_timeout: {initial_fetch_timeout_s:g}s")
    return f"""node: {{id: "{node_id}", cluster: "{node_id}"}}
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}
static_resources:
  clusters:
  - name: xds
    connect_timeout: 1s
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {xds_port}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {{cluster_name: xds}}
  lds_config:
    ads: {{}}
    resource_api_version: V3{fetch}
  cds_config:
    ads: {{}}
    resource_api_version: V3{fetch}
"""


@dataclass
class _TypeState:
    """What one stream asked for and was sent, for one type."""

    names: frozenset[str] = frozenset()
    sent_version: str | None = None
    sent_names: frozenset[str] = frozenset()
    sent_nonce: str = ""
    acked_version: str | None = None
    nacked_version: str | None = None


@dataclass
class _Stream:
    """One ADS stream: the reader fills `types`, the response generator drains `out`."""

    ident: int
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    types: dict[str, _TypeState] = field(default_factory=dict)
    closed: bool = False
    reader: threading.Thread | None = None
    snapshot: Snapshot | None = None
    """Pinned at its start by `serve_new_streams`; None: the plane's current snapshot."""

    def close(self) -> None:
        # Called from gRPC's callback thread on RPC end, and from our own shutdown: the None
        # wakes the response generator so that its pool thread is freed at once.
        self.closed = True
        self.out.put(None)


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, plane: ControlPlane) -> None:
        self._plane = plane

    def StreamAggregatedResources(self, request_iterator: Iterator[Any],
                                  context: Any) -> Iterator[Any]:
        return self._plane._serve_stream(request_iterator, context)

    def DeltaAggregatedResources(self, request_iterator: Iterator[Any],
                                 context: Any) -> Iterator[Any]:
        # SotW only: a Delta client is told so rather than left hanging.
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "this control plane speaks SotW only")
        return iter(())


class ControlPlane:
    """An ADS server of one Snapshot at a time, with switches for the failures tests need."""

    def __init__(self, snapshot: Snapshot, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._snapshot = snapshot
        # One condition guards every field below and wakes `wait_for_acks`.
        self._cond = threading.Condition()
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._nonces = itertools.count(1)
        self._answering: frozenset[str] | None = None  # None: every type
        self._new_streams: Snapshot | None = None
        self._requests = 0
        self._nacks = 0
        self._server: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._readers: list[threading.Thread] = []

    # -- the server's life

    def start(self) -> ControlPlane:
        self._bind()
        return self

    @property
    def port(self) -> int:
        return self._port

    def _bind(self) -> None:
        pool = ThreadPoolExecutor(max_workers=_POOL_THREADS, thread_name_prefix="xds")
        # so_reuseport 0: after come_back() exactly one server owns the port, so a connect
        # can never land on a half-stopped one.
        server = grpc.server(pool, options=[("grpc.so_reuseport", 0)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        try:
            port = server.add_insecure_port(f"{self._host}:{self._port}")
        except RuntimeError:
            port = 0
        if not port:
            server.stop(None)
            pool.shutdown(wait=True)
            raise OSError(f"cannot bind the xDS server to {self._host}:{self._port}")
        server.start()
        self._port = port
        self._server, self._pool = server, pool

    def _unbind(self) -> None:
        server, pool = self._server, self._pool
        self._server = self._pool = None
        if server is None:
            return
        # grace 0: every open RPC is cancelled now, so streams end (Envoy sees its connection
        # drop) and the listening socket is closed before we return: new connects fail.
        server.stop(grace=0).wait()
        with self._cond:
            streams = list(self._streams.values())
            readers, self._readers = self._readers, []
        for stream in streams:
            stream.close()
        # Join what ran our code, so nothing of ours outlives the server (no stray thread
        # writing to a closed stream, no thread left at interpreter exit).
        if pool is not None:
            pool.shutdown(wait=True)
        for reader in readers:
            reader.join(_JOIN_S)

    def go_down(self) -> None:
        self._unbind()

    def come_back(self) -> None:
        if self._server is None:
            self._bind()

    def stop(self) -> None:
        self._unbind()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it serves and whether it answers

    def set_snapshot(self, snapshot: Snapshot) -> None:
        with self._cond:
            self._snapshot = snapshot
            self._flush_all()

    def serve_new_streams(self, snapshot: Snapshot | None) -> None:
        """Streams opened from now on get `snapshot` (None: the current one again), streams
        already open keep theirs: a stale or differently-configured replica behind the same
        address, as a new generation's fresh connection may meet."""
        with self._cond:
            self._new_streams = snapshot

    def go_silent(self) -> None:
        self.answer_only(())

    def answer(self) -> None:
        self.answer_only(None)

    def answer_only(self, type_urls: Collection[str] | None) -> None:
        with self._cond:
            self._answering = None if type_urls is None else frozenset(type_urls)
            self._flush_all()

    # -- observations

    def requests(self) -> int:
        with self._cond:
            return self._requests

    def nacks(self) -> int:
        with self._cond:
            return self._nacks

    def connected_streams(self) -> int:
        with self._cond:
            return len(self._streams)

    def wait_for_acks(self, type_url: str, version: str, timeout_s: float) -> bool:
        """True once there is at least one open stream and every open stream has ACKed that
        version of that type (zero streams is not "all ACKed": nobody has the config)."""
        deadline = time.monotonic() + timeout_s

        def acked() -> bool:
            return bool(self._streams) and all(
                (s := st.types.get(type_url)) is not None and s.acked_version == version
                for st in self._streams.values())

        with self._cond:
            while not acked():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- the streams

    def _serve_stream(self, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        stream = _Stream(ident=next(self._ids), snapshot=self._new_streams)
        reader = threading.Thread(target=self._read, args=(stream, requests),
                                  name=f"xds-read-{stream.ident}", daemon=True)
        stream.reader = reader
        with self._cond:
            self._streams[stream.ident] = stream
            self._readers = [r for r in self._readers if r.is_alive()]
            self._readers.append(reader)
            self._cond.notify_all()
        # Fires when the RPC ends for any reason (client cancel, server stop): wakes us.
        context.add_callback(stream.close)
        reader.start()
        return self._write(stream, context)

    def _write(self, stream: _Stream, context: Any) -> Iterator[Any]:
        """The stream's one writer: yields what the reader (or a snapshot change) queued."""
        try:
            while not stream.closed and context.is_active():
                try:
                    response = stream.out.get(timeout=_POLL_S)
                except queue.Empty:
                    continue
                if response is None:
                    return
                yield response
        finally:
            with self._cond:
                self._streams.pop(stream.ident, None)
                self._cond.notify_all()

    def _read(self, stream: _Stream, requests: Iterator[Any]) -> None:
        """The stream's one reader: records every request, answers what needs answering."""
        # grpc raises RpcError from the iterator when the RPC is cancelled (go_down, stop,
        # Envoy gone): the normal end of a stream, nothing to report.
        with contextlib.suppress(grpc.RpcError, ValueError):
            for request in requests:
                self._on_request(stream, request)
        stream.close()

    def _on_request(self, stream: _Stream, request: Any) -> None:
        type_url = request.type_url
        with self._cond:
            self._requests += 1
            state = stream.types.setdefault(type_url, _TypeState())
            if type_url in _NAMED:
                state.names = frozenset(request.resource_names)
            if request.HasField("error_detail"):
                # A NACK: Envoy keeps its last good config; answering the same version again
                # would only be NACKed again, so wait for the next snapshot.
                self._nacks += 1
                state.nacked_version = (stream.snapshot or self._snapshot).version
                _log.debug("stream %d NACKed %s %s: %s", stream.ident, type_url,
                           request.version_info, request.error_detail.message)
            elif request.response_nonce and request.response_nonce == state.sent_nonce:
                state.acked_version = request.version_info
            self._flush(stream, type_url, state)
            self._cond.notify_all()

    def _flush_all(self) -> None:
        for stream in self._streams.values():
            for type_url, state in stream.types.items():
                self._flush(stream, type_url, state)

    def _flush(self, stream: _Stream, type_url: str, state: _TypeState) -> None:
        """Send one type to one stream if what it would get differs from what it was sent.
        Under the lock, so responses are queued in the order their nonces were made."""
        if stream.closed or (self._answering is not None and type_url not in self._answering):
            return
        snapshot = stream.snapshot or self._snapshot
        if state.nacked_version == snapshot.version:
            return
        # An ACK repeats the last version and nonce: nothing new for it, no answer. A request
        # for a new set of names under the same nonce is not an ACK in effect (Envoy asks for
        # a new listener's route that way) and must be answered.
        fresh = state.sent_version != snapshot.version or (
            type_url in _NAMED and state.names != state.sent_names)
        if not fresh:
            return
        known = snapshot.resources(type_url)
        chosen = (list(known.values()) if type_url not in _NAMED
                  else [known[n] for n in sorted(state.names) if n in known])
        nonce = str(next(self._nonces))
        state.sent_version, state.sent_names, state.sent_nonce = (
            snapshot.version, state.names, nonce)
        state.nacked_version = None
        stream.out.put(discovery_pb2.DiscoveryResponse(
            version_info=snapshot.version, type_url=type_url, nonce=nonce,
            resources=[_packed(r) for r in chosen]))
