"""The Envoy configs of the scenarios: an HTTP listener (HTTP/1.1 and h2c on one port:
`codec_type: AUTO`) routing to the benchmark's upstream, a TCP listener (tcp_proxy) to its echo
server, the admin API on loopback; and the broken variants of scenario 4.

Every response carries `x-meshctl-epoch` from the MESHCTL_EPOCH variable: meshctl sets it for
each generation; the naive arm sets it itself for each Envoy it starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchlib import free_port

EPOCH_HEADER = "x-meshctl-epoch"

_HCM_TYPE = ("type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
             "HttpConnectionManager")
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
_HTTP_OPTIONS_TYPE = ("type.googleapis.com/envoy.extensions.upstreams.http.v3."
                      "HttpProtocolOptions")

_BIG = 1_000_000
"""Circuit breaker thresholds: the defaults (1024 pending requests) would turn slow requests at
a high rate into 503s that are the config's doing, not the upgrade's."""


def http_listener(name: str, port: int, tag: str) -> str:
    return f"""\
  - name: {name}
    address:
      socket_address: {{address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": {_HCM_TYPE}
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 60s}}
              response_headers_to_add:
              - header: {{key: {EPOCH_HEADER}, value: "%ENVIRONMENT(MESHCTL_EPOCH)%"}}
              - header: {{key: x-bench-config, value: "{tag}"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": {_ROUTER_TYPE}
"""


def tcp_listener(port: int) -> str:
    return f"""\
  - name: tcp
    address:
      socket_address: {{address: 127.0.0.1, port_value: {port}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": {_TCP_PROXY_TYPE}
          stat_prefix: tcp
          cluster: echo
"""


def cluster(name: str, port: int, *, http2: bool = False) -> str:
    text = f"""\
  - name: {name}
    connect_timeout: 1s
    type: STATIC
    circuit_breakers:
      thresholds:
      - {{max_connections: {_BIG}, max_pending_requests: {_BIG}, max_requests: {_BIG}}}
"""
    if http2:
        text += f"""\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": {_HTTP_OPTIONS_TYPE}
        explicit_http_config: {{http2_protocol_options: {{}}}}
"""
    return text + f"""\
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {port}}}
"""


_XDS_HANG = """\
node: {id: meshctl-bench, cluster: meshctl-bench}
dynamic_resources:
  lds_config:
    ads: {}
    initial_fetch_timeout: 0s
    resource_api_version: V3
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    grpc_services:
    - envoy_grpc: {cluster_name: xds}
"""


def envoy_config(*, admin_port: int, http_port: int, tcp_port: int, upstream_port: int,
                 echo_port: int, tag: str, extra_listener_port: int | None = None,
                 xds_hang_port: int | None = None) -> str:
    """The scenario config. `extra_listener_port`: a second HTTP listener there (fails to bind
    if the port is taken); `xds_hang_port`: listeners also from an ADS server there with no
    fetch timeout, so initialization never ends if that server does not answer."""
    text = _XDS_HANG if xds_hang_port is not None else ""
    text += (f"admin:\n  address:\n    socket_address: "
             f"{{address: 127.0.0.1, port_value: {admin_port}}}\n"
             "static_resources:\n  listeners:\n")
    text += http_listener("http", http_port, tag) + tcp_listener(tcp_port)
    if extra_listener_port is not None:
        text += http_listener("http_extra", extra_listener_port, tag)
    text += "  clusters:\n" + cluster("upstream", upstream_port) + cluster("echo", echo_port)
    if xds_hang_port is not None:
        text += cluster("xds", xds_hang_port, http2=True)
    return text


@dataclass(frozen=True)
class Site:
    """One proxy under test: its work dir, ports (the same for every generation: they are
    handed over), and configs."""

    root: Path
    admin_port: int
    http_port: int
    tcp_port: int
    upstream_port: int
    echo_port: int

    @classmethod
    def create(cls, root: Path, upstream_port: int, echo_port: int) -> Site:
        root.mkdir(parents=True, exist_ok=True)
        return cls(root=root, admin_port=free_port(), http_port=free_port(),
                   tcp_port=free_port(), upstream_port=upstream_port, echo_port=echo_port)

    def config(self, name: str, *, extra_listener_port: int | None = None,
               xds_hang_port: int | None = None) -> Path:
        """Write config `name` (also its tag in the `x-bench-config` header) and return it."""
        path = self.root / f"{name}.yaml"
        path.write_text(envoy_config(
            admin_port=self.admin_port, http_port=self.http_port, tcp_port=self.tcp_port,
            upstream_port=self.upstream_port, echo_port=self.echo_port, tag=name,
            extra_listener_port=extra_listener_port, xds_hang_port=xds_hang_port))
        return path
