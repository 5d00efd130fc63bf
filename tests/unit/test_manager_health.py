"""The health port (`meshctl.manager.health`): real HTTP over loopback, as kubelet and
Prometheus would reach it. The server listens on port 0; every connection is closed."""

from __future__ import annotations

import contextlib
import http.client
import socket
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshctl import errors
from meshctl.manager.health import HealthServer
from meshctl.manager.metrics import Metrics

HOST = "127.0.0.1"


class Readiness:
    """What the supervisor would publish: a snapshot the check only reads."""

    def __init__(self) -> None:
        self.state = (True, "")
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.state


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def server(readiness: Readiness, metrics: Metrics) -> Iterator[HealthServer]:
    srv = HealthServer(HOST, 0, readiness, metrics)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def request(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def test_port_zero_binds_a_real_port(server: HealthServer) -> None:
    assert server.port > 0


def test_ready_answers_200_ready(server: HealthServer) -> None:
    status, headers, body = request(server.port, "/healthz/ready")
    assert (status, body) == (200, b"ready\n")
    assert headers["content-type"].startswith("text/plain")


def test_not_ready_answers_503_with_the_reason(server: HealthServer,
                                               readiness: Readiness) -> None:
    readiness.state = (False, "stopping")
    assert request(server.port, "/healthz/ready")[::2] == (503, b"not ready: stopping\n")


def test_the_ready_check_is_asked_on_every_request(server: HealthServer,
                                                  readiness: Readiness) -> None:
    readiness.state = (False, "starting")
    assert request(server.port, "/healthz/ready")[0] == 503
    readiness.state = (True, "")
    assert request(server.port, "/healthz/ready")[0] == 200
    assert readiness.calls == 2


def test_a_reason_over_several_lines_is_sent_as_one_line(server: HealthServer,
                                                        readiness: Readiness) -> None:
    readiness.state = (False, "upgrade u1\nin progress")
    assert request(server.port, "/healthz/ready")[2] == b"not ready: upgrade u1 in progress\n"


def test_a_ready_check_that_raises_answers_503_and_the_server_keeps_serving(
        metrics: Metrics) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("snapshot missing")

    srv = HealthServer(HOST, 0, broken, metrics)
    srv.start()
    try:
        for _ in range(2):
            assert request(srv.port, "/healthz/ready")[::2] == (
                503, b"not ready: internal error\n")
        assert request(srv.port, "/healthz/live")[0] == 200
    finally:
        srv.close()


def test_live_answers_alive_even_when_not_ready(server: HealthServer,
                                                readiness: Readiness) -> None:
    readiness.state = (False, "stopping")
    assert request(server.port, "/healthz/live")[::2] == (200, b"alive\n")
    assert readiness.calls == 0


def test_a_query_string_does_not_change_the_route(server: HealthServer) -> None:
    assert request(server.port, "/healthz/ready?probe=kubelet")[0] == 200


@pytest.mark.parametrize("path", ["/", "/healthz", "/healthz/ready/", "/metrics/x", "/stats"])
def test_an_unknown_path_answers_404(server: HealthServer, path: str) -> None:
    assert request(server.port, path)[0] == 404


@pytest.mark.parametrize(("path", "ready", "status"), [
    ("/healthz/ready", True, 200),
    ("/healthz/ready", False, 503),
    ("/healthz/live", False, 200),
])
def test_head_answers_the_status_and_length_without_a_body(
        server: HealthServer, readiness: Readiness, path: str, ready: bool,
        status: int) -> None:
    readiness.state = (ready, "stopping")
    got_status, headers, body = request(server.port, path, method="HEAD")
    assert got_status == status
    assert body == b""
    expected = request(server.port, path)[2]
    assert int(headers["content-length"]) == len(expected)


def test_metrics_serves_the_registry_in_the_prometheus_text_format(
        server: HealthServer, metrics: Metrics) -> None:
    metrics.set_live(2, "1.40.0")
    metrics.set_ready(True)
    metrics.upgrade_finished({"result": "succeeded", "total_s": 4.2, "drain_s": 3.0,
                              "live_after_s": 0.8, "forced_closes": 0})
    status, headers, body = request(server.port, "/metrics")
    assert status == 200
    assert headers["content-type"] == metrics.render()[1]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("meshctl_upgrades_total", (("result", "succeeded"),))] == 1
    assert samples[("meshctl_envoy_info", (("version", "1.40.0"),))] == 1
    assert samples[("meshctl_epoch", ())] == 2
    assert samples[("meshctl_ready", ())] == 1


def test_requests_are_not_logged_to_stderr(server: HealthServer,
                                           capfd: pytest.CaptureFixture[str]) -> None:
    request(server.port, "/healthz/ready")
    request(server.port, "/nowhere")
    assert capfd.readouterr().err == ""


def test_a_port_already_in_use_is_bad_input(readiness: Readiness, metrics: Metrics) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        srv = HealthServer(HOST, port, readiness, metrics)
        with pytest.raises(errors.BadInput) as info:
            srv.start()
    assert str(info.value) == (
        f"health port {HOST}:{port} cannot be bound: Address already in use")
    srv.close()  # nothing was started: a no-op


def test_a_second_server_on_the_same_port_is_bad_input(server: HealthServer,
                                                       readiness: Readiness,
                                                       metrics: Metrics) -> None:
    with pytest.raises(errors.BadInput, match="cannot be bound"):
        HealthServer(HOST, server.port, readiness, metrics).start()


def test_an_address_that_does_not_exist_is_bad_input(readiness: Readiness,
                                                     metrics: Metrics) -> None:
    with pytest.raises(errors.BadInput, match=r"^health port 192\.0\.2\.1:0 cannot be bound"):
        HealthServer("192.0.2.1", 0, readiness, metrics).start()


def test_close_releases_the_port_so_it_can_be_bound_again(readiness: Readiness,
                                                          metrics: Metrics) -> None:
    first = HealthServer(HOST, 0, readiness, metrics)
    first.start()
    port = first.port
    assert request(port, "/healthz/live")[0] == 200
    first.close()
    with pytest.raises(ConnectionRefusedError), contextlib.closing(
            socket.create_connection((HOST, port), timeout=2)):
        pass
    again = HealthServer(HOST, port, readiness, metrics)
    again.start()
    try:
        assert request(port, "/healthz/live")[0] == 200
    finally:
        again.close()


def test_close_twice_is_harmless(readiness: Readiness, metrics: Metrics) -> None:
    srv = HealthServer(HOST, 0, readiness, metrics)
    srv.start()
    srv.close()
    srv.close()
