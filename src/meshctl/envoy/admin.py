"""Envoy's admin API, as the supervisor needs it: readiness, identity, listeners, drain.

Each generation writes its admin address to a file (--admin-address-path), so we never parse
the user's config for it, and port 0 works. Every call has a short timeout: the supervisor's
loop calls these and must stay responsive.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from pathlib import Path


class AdminUnavailable(Exception):
    """The admin listener is not there (not yet bound, closed at a handover, or gone)."""


@dataclass(frozen=True)
class ServerInfo:
    version: str
    """Envoy's full version string, e.g. `9e55.../1.40.0/Clean/RELEASE/BoringSSL`."""
    state: str
    """LIVE, PRE_INITIALIZING, INITIALIZING or DRAINING."""
    epoch: int
    hot_restart_version: str = ""
    """The hot-restart protocol the running process speaks (`--hot-restart-version` of its
    binary, as the process knows it: the file may have been replaced since)."""


def parse_address(text: str) -> tuple[str, int]:
    """`127.0.0.1:15000` or `[::1]:15000` as (host, port)."""
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not an address: {text!r}")
    return host.strip("[]"), int(port)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket: Envoy's admin on a `pipe` address (mode 0600), which other
    local users cannot reach, unlike a loopback port."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class AdminClient:
    def __init__(self, address_file: Path, timeout_s: float = 1.0) -> None:
        self.address_file = address_file
        self.timeout_s = timeout_s

    def address(self) -> tuple[str, int] | str | None:
        """(host, port), or the path of a Unix socket (Envoy writes the pipe's path)."""
        try:
            text = self.address_file.read_text()
        except FileNotFoundError:
            return None
        if text.startswith("/"):
            return text.strip() or None
        try:
            return parse_address(text)
        except ValueError:
            return None  # written but not complete yet

    def _request(self, method: str, path: str) -> tuple[int, bytes]:
        addr = self.address()
        if addr is None:
            raise AdminUnavailable("admin address not published yet")
        conn: http.client.HTTPConnection = (
            _UnixHTTPConnection(addr, self.timeout_s) if isinstance(addr, str)
            else http.client.HTTPConnection(addr[0], addr[1], timeout=self.timeout_s))
        where = addr if isinstance(addr, str) else f"{addr[0]}:{addr[1]}"
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AdminUnavailable(f"admin {where}{path}: {exc}") from exc
        finally:
            conn.close()

    def is_ready(self) -> bool:
        """True when GET /ready answers 200 LIVE."""
        try:
            status, body = self._request("GET", "/ready")
        except AdminUnavailable:
            return False
        return status == 200 and body.strip() == b"LIVE"

    def server_info(self) -> ServerInfo:
        status, body = self._request("GET", "/server_info")
        if status != 200:
            raise AdminUnavailable(f"/server_info answered {status}")
        data = json.loads(body)
        return ServerInfo(
            version=str(data.get("version", "")),
            state=str(data.get("state", "")),
            hot_restart_version=str(data.get("hot_restart_version", "")),
            epoch=int(data.get("command_line_options", {}).get("restart_epoch", -1)),
        )

    def listener_ports(self) -> frozenset[int]:
        """Ports of the data-plane listeners (never the admin port)."""
        return frozenset(port for _, port in self.listener_addresses())

    def listen_urls(self) -> frozenset[str]:
        """Every data-plane listening address as Envoy's hot restart names it, once as TCP and
        once as UDP (`tcp://127.0.0.1:10000`, `udp://[::]:53`): /listeners does not say which
        a listener is, and a parent answers fd -1 for the one it does not have."""
        return frozenset(f"{proto}://[{host}]:{port}" if ":" in host
                         else f"{proto}://{host}:{port}"
                         for host, port in self.listener_addresses() for proto in ("tcp", "udp"))

    def listener_addresses(self) -> frozenset[tuple[str, int]]:
        """(host, port) of every active listener's addresses, as bound."""
        status, body = self._request("GET", "/listeners?format=json")
        if status != 200:
            raise AdminUnavailable(f"/listeners answered {status}")
        try:
            statuses = json.loads(body).get("listener_statuses", [])
        except (ValueError, AttributeError) as exc:
            raise AdminUnavailable(f"/listeners: not JSON ({exc})") from exc
        found: set[tuple[str, int]] = set()
        for listener in statuses if isinstance(statuses, list) else []:
            for key in ("local_address", "additional_local_addresses"):
                value = listener.get(key) if isinstance(listener, dict) else None
                for address in value if isinstance(value, list) else [value]:
                    sa = (address or {}).get("socket_address", {})
                    port, host = sa.get("port_value"), sa.get("address")
                    if isinstance(port, int) and port > 0 and isinstance(host, str):
                        found.add((host, port))
        return frozenset(found)

    def get_json(self, path: str) -> object:
        """GET a JSON endpoint (`/config_dump?...`, `/stats?format=json&...`)."""
        status, body = self._request("GET", path)
        if status != 200:
            raise AdminUnavailable(f"{path} answered {status}")
        try:
            result: object = json.loads(body)
        except ValueError as exc:
            raise AdminUnavailable(f"{path}: not JSON ({exc})") from exc
        return result

    def drain_listeners(self, graceful: bool = True) -> None:
        """Stop accepting and start Envoy's drain sequence (used at supervisor shutdown)."""
        path = "/drain_listeners?graceful" if graceful else "/drain_listeners"
        status, _ = self._request("POST", path)
        if status != 200:
            raise AdminUnavailable(f"{path} answered {status}")
