"""The benchmark's load client (bench/zeroloss): every attempt counted exactly once, each in the
right outcome, against real sockets: a small HTTP/1.1 server that answers, resets, closes,
hangs or delays on purpose, and a small HTTP/2 server that resets streams and drains with a
GOAWAY."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from zeroloss import records  # noqa: E402
from zeroloss.client import LaneGroup, LoadPlan, LoadRun, Target, run_plan  # noqa: E402
from zeroloss.protocols import ProtocolViolation, parse_response  # noqa: E402
from zeroloss.upstream import HttpServer, request_delay_s  # noqa: E402

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-meshctl-epoch: 7\r\n\r\nok\n"


class ScriptedServer:
    """HTTP/1.1 on real sockets; what it does with a request depends on its path:
    /ok (200, epoch 7), /status/N, /reset (RST), /close (close, no response), /partial (half a
    response, then close), /hang (never answers), /delay/MS, /idle-close (answers, then closes
    the connection when the next request arrives, as a server closing an idle keep-alive
    connection does), /held-close/MS (answers; the next request is held MS, then the connection
    closed), /mixed (by the request's number: 200, reset, close, 503, in turn)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = int(self.sock.getsockname()[1])
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._n = 0
        self._conns: list[socket.socket] = []
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        close_next = None
        with contextlib.suppress(OSError), conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(4096)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                with self._lock:
                    self.received[path.split("/")[1]] += 1
                    self._n += 1
                    n = self._n
                if close_next is not None:
                    time.sleep(close_next)
                    return
                if not self._answer(conn, path, n):
                    return
                if path == "/idle-close":
                    close_next = 0.0
                elif path.startswith("/held-close/"):
                    close_next = int(path.rsplit("/", 1)[1]) / 1000

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def _answer(self, conn: socket.socket, path: str, n: int) -> bool:
        """False: the connection is done."""
        if path == "/mixed":
            path = ["/ok", "/reset", "/close", "/status/503"][n % 4]
        if path in ("/ok", "/idle-close") or path.startswith("/held-close/"):
            conn.sendall(OK)
        elif path.startswith("/status/"):
            code = path.rsplit("/", 1)[1]
            conn.sendall(f"HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n".encode())
        elif path.startswith("/delay/"):
            time.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            conn.sendall(OK)
        elif path == "/reset":
            self._reset(conn)
            return False
        elif path == "/close":
            return False
        elif path == "/partial":
            conn.sendall(OK[:20])
            return False
        elif path == "/hang":
            time.sleep(3)
            return False
        return True

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    yield srv
    srv.close()


def run(port: int, *groups: LaneGroup, duration_s: float = 0.5, timeout_s: float = 2.0
        ) -> list[records.Attempt]:
    plan = LoadPlan(tuple(groups), duration_s, timeout_s)
    return asyncio.run(run_plan(Target("127.0.0.1", port), plan))


def one(port: int, path: str, mode: str = "h1-new", timeout_s: float = 2.0) -> list[str]:
    """The outcomes of the attempts of exactly one request."""
    attempts = run(port, LaneGroup(mode, 1, rate=1.0, path=path), duration_s=0.5,
                   timeout_s=timeout_s)
    assert len(records.fold(attempts)) == 1
    return [a.outcome for a in attempts]


# --------------------------------------------------------------------------- one request


def test_a_response_is_its_status_and_the_generation_that_served_it(
        server: ScriptedServer) -> None:
    attempts = run(server.port, LaneGroup("h1", 1, rate=1.0, path="/ok"))
    assert [(a.outcome, a.epoch) for a in attempts] == [("200", "7")]


@pytest.mark.parametrize(("path", "outcome"), [
    ("/reset", records.RESET),
    ("/close", records.EOF),
    ("/partial", records.EOF),
    ("/status/503", "503"),
])
def test_each_way_a_request_ends_has_its_own_outcome(server: ScriptedServer, path: str,
                                                     outcome: str) -> None:
    assert one(server.port, path) == [outcome]


def test_no_response_within_the_timeout_is_a_timeout(server: ScriptedServer) -> None:
    assert one(server.port, "/hang", timeout_s=0.3) == [records.TIMEOUT]


def test_nothing_listening_is_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    assert one(port, "/ok") == [records.REFUSED]


def test_a_keep_alive_connection_closed_as_the_request_goes_out_is_retried_once(
        server: ScriptedServer) -> None:
    # Two requests on one lane: the first is answered, the second meets the server closing
    # the now idle connection: the keep-alive race. Retried on a new connection, it succeeds.
    attempts = run(server.port, LaneGroup("h1", 1, rate=4.0, path="/idle-close"),
                   duration_s=0.5)
    reqs = records.fold(attempts)
    assert [r.outcome for r in reqs] == ["200", "200"]
    assert [a.outcome for a in attempts] == ["200", records.STALE, "200"]
    assert records.account(reqs).retried == {records.STALE: 1}
    assert server.received["idle-close"] == 3


def test_a_request_held_by_the_server_then_lost_is_a_failure_not_a_retry(
        server: ScriptedServer) -> None:
    # The server had the request for 200 ms: it may have processed it, so no retry.
    attempts = run(server.port, LaneGroup("h1", 1, rate=4.0, path="/held-close/200"),
                   duration_s=0.5)
    assert [a.outcome for a in attempts] == ["200", records.EOF]


# --------------------------------------------------------------------------- accounting


def test_every_attempt_is_counted_exactly_once_whatever_the_server_does(
        server: ScriptedServer) -> None:
    groups = (LaneGroup("h1", 4, rate=200.0, path="/mixed"),
              LaneGroup("h1-new", 4, rate=100.0, path="/mixed"))
    attempts = run(server.port, *groups, duration_s=1.0)
    reqs = records.fold(attempts)
    acc = records.account(reqs)

    # Open loop: exactly rate x duration requests, each once, whatever happened to them.
    assert acc.requests == 200 + 100
    assert len({(a.worker, a.request) for a in attempts}) == acc.requests
    assert Counter(r.mode for r in reqs) == {"h1": 200, "h1-new": 100}
    # Every attempt reached the server once and is in exactly one outcome.
    assert len(attempts) == acc.attempts == sum(server.received.values())
    assert sum(acc.outcomes.values()) == acc.requests
    assert acc.ok + acc.failed == acc.requests
    assert acc.ok == acc.outcomes["200"]
    assert set(acc.outcomes) <= {"200", "503", records.RESET, records.EOF}
    assert acc.outcomes["503"] > 0 and acc.outcomes[records.RESET] > 0


def test_a_stall_shows_as_latency_not_as_fewer_requests(server: ScriptedServer) -> None:
    # One lane, each request held 100 ms, 20 due per second: the queue grows, and each
    # request's latency counts from when it was due.
    attempts = run(server.port, LaneGroup("h1", 1, rate=20.0, path="/delay/100"),
                   duration_s=0.5)
    reqs = records.fold(attempts)
    assert len(reqs) == 10
    assert all(r.ok for r in reqs)
    assert [round(r.intended_s - reqs[0].intended_s, 3) for r in reqs] == [
        round(i * 0.05, 3) for i in range(10)]
    assert reqs[-1].latency_s > 0.5  # due at 0.45 s, sent after nine 100 ms requests
    assert reqs[-1].latency_s > (reqs[-1].end_s - max(a.start_s for a in attempts)) + 0.4


def test_closed_loop_sends_the_next_request_when_the_last_one_ended(
        server: ScriptedServer) -> None:
    attempts = run(server.port, LaneGroup("h1", 2, rate=0.0, path="/delay/50"),
                   duration_s=0.5)
    reqs = records.fold(attempts)
    assert 12 <= len(reqs) <= 22  # 2 lanes x 0.5 s / ~50 ms
    assert all(abs(a.start_s - a.intended_s) < 0.005 for a in attempts)


def test_worker_processes_share_the_rate_and_their_attempts_are_merged(
        server: ScriptedServer, tmp_path: Path) -> None:
    plan = LoadPlan((LaneGroup("h1", 4, rate=100.0, path="/ok"),
                     LaneGroup("h1-new", 2, rate=50.0, path="/ok")), 1.0, 2.0)
    load = LoadRun(Target("127.0.0.1", server.port), plan, tmp_path, workers=2,
                   bench_dir=BENCH)
    start = load.start()
    attempts = load.wait()

    reqs = records.fold(attempts)
    assert len(reqs) == 150 == sum(server.received.values())
    assert {a.worker for a in attempts} == {0, 1}
    assert min(r.intended_s for r in reqs) == pytest.approx(start, abs=1e-6)
    assert all(r.ok for r in reqs)


# --------------------------------------------------------------------------- HTTP/2


class H2Server:
    """h2c on real sockets, one thread per connection: /ok (200, epoch 9), /rst (stream reset
    INTERNAL_ERROR), /refused (REFUSED_STREAM the first time, then 200), /drain (a GOAWAY naming
    this stream as the last one, then the response 100 ms later: a graceful drain, as Envoy's)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.streams: Counter[str] = Counter()
        self.connections = 0
        self._refused_once = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        with contextlib.suppress(OSError), sock:
            sock.sendall(conn.data_to_send())
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        headers = dict(event.headers or [])
                        if not self._request(conn, sock, int(event.stream_id or 0),
                                             headers[b":path"].decode()):
                            return
                sock.sendall(conn.data_to_send())

    def _respond(self, conn: h2.connection.H2Connection, stream_id: int) -> None:
        conn.send_headers(stream_id, [(":status", "200"), ("x-meshctl-epoch", "9")])
        conn.send_data(stream_id, b"ok\n", end_stream=True)

    def _request(self, conn: h2.connection.H2Connection, sock: socket.socket,
                 stream_id: int, path: str) -> bool:
        """False: the connection is done."""
        self.streams[path] += 1
        if path == "/ok":
            self._respond(conn, stream_id)
        elif path == "/rst":
            conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        elif path == "/refused":
            if not self._refused_once:
                self._refused_once = True
                conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            else:
                self._respond(conn, stream_id)
        elif path == "/drain":
            conn.close_connection(last_stream_id=stream_id)
            sock.sendall(conn.data_to_send())
            time.sleep(0.1)
            # h2 (server side) is CLOSED after its own GOAWAY: write the response frames by
            # hand, as a draining server still answers the streams it accepted.
            sock.sendall(_raw_h2_response(stream_id))
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def _raw_h2_response(stream_id: int) -> bytes:
    from hpack import Encoder  # noqa: PLC0415

    block = Encoder().encode([(":status", "200"), ("x-meshctl-epoch", "9")])
    headers = struct.pack("!I", len(block))[1:] + bytes([0x1, 0x4]) + \
        struct.pack("!I", stream_id) + block
    body = b"ok\n"
    data = struct.pack("!I", len(body))[1:] + bytes([0x0, 0x1]) + \
        struct.pack("!I", stream_id) + body
    return headers + data


@pytest.fixture
def h2_server() -> Iterator[H2Server]:
    srv = H2Server()
    yield srv
    srv.close()


def h2_outcomes(port: int, path: str, n: int = 1) -> list[records.Attempt]:
    return run(port, LaneGroup("h2", 1, rate=n / 0.5, path=path, h2_connections=1),
               duration_s=0.5)


def test_http2_responses_carry_status_and_generation(h2_server: H2Server) -> None:
    attempts = h2_outcomes(h2_server.port, "/ok", n=3)
    assert [(a.outcome, a.epoch) for a in attempts] == [("200", "9")] * 3
    assert h2_server.connections == 1  # streams multiplexed on one connection


def test_an_http2_stream_reset_by_the_server_is_a_failure_named_by_its_code(
        h2_server: H2Server) -> None:
    assert [a.outcome for a in h2_outcomes(h2_server.port, "/rst")] == [
        records.H2_RESET_PREFIX + "INTERNAL_ERROR"]


def test_an_http2_stream_refused_by_the_server_is_retried(h2_server: H2Server) -> None:
    assert [a.outcome for a in h2_outcomes(h2_server.port, "/refused")] == [
        records.H2_REFUSED_STREAM, "200"]


def test_a_stream_in_flight_when_the_server_sends_goaway_still_gets_its_response(
        h2_server: H2Server) -> None:
    # RFC 9113 6.8: streams up to the GOAWAY's last stream id complete. (Stock h2 raises
    # ProtocolError here; the client corrects that.) The next request opens a new connection.
    attempts = h2_outcomes(h2_server.port, "/drain", n=2)
    assert [a.outcome for a in attempts] == ["200", "200"]
    assert h2_server.connections == 2


# --------------------------------------------------------------------------- parsing, upstream


def test_responses_are_complete_only_when_their_body_is() -> None:
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n"
    assert parse_response(chunked[:-2]) is None
    parsed = parse_response(chunked + b"HTTP/1.1")
    assert parsed is not None and parsed[1] == len(chunked)
    assert parse_response(OK[:-1]) is None
    until_close = b"HTTP/1.1 200 OK\r\n\r\nbody"
    assert parse_response(until_close) is None
    done = parse_response(until_close, eof=True)
    assert done is not None and done[0].close
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    parsed = parse_response(interim)
    assert parsed is not None and (parsed[0].status, parsed[1]) == (200, len(interim))
    with pytest.raises(ProtocolViolation):
        parse_response(b"SSH-2.0-OpenSSH\r\n\r\n")


def test_the_upstream_holds_a_request_for_the_delay_it_asks_for() -> None:
    assert request_delay_s(b"/?delay_ms=2000", 0.0) == 2.0
    assert request_delay_s(b"/", 0.5) == 0.5
    assert request_delay_s(b"/?delay_ms=x", 0.1) == 0.1
    srv = HttpServer(0).start()
    try:
        attempts = run(srv.port, LaneGroup("h1", 2, rate=4.0, path="/?delay_ms=200"),
                       duration_s=0.5)
        # The server counts a response once written: the client may have it a moment before.
        deadline = time.monotonic() + 2
        while srv.snapshot().served < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        srv.close()
    assert [a.outcome for a in attempts] == ["200", "200"]
    assert all(a.end_s - a.start_s >= 0.2 for a in attempts)
    assert srv.snapshot().served == 2


def test_the_upstream_takes_a_burst_of_connections_and_counts_each_request_once() -> None:
    # An upgrade's handover: every client reconnects at once, each on a new connection.
    srv = HttpServer(0).start()
    conns = []
    try:
        for _ in range(200):
            conns.append(socket.create_connection(("127.0.0.1", srv.port)))
        for i, conn in enumerate(conns):
            body = b"x" * (i % 3)
            conn.sendall(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body
                         + b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        for conn in conns:
            conn.settimeout(5)
            got = b""
            while got.count(b"ok\n") < 2:
                got += conn.recv(4096)
            assert got.count(b"HTTP/1.1 200 OK") == 2
        # The server counts a response once written: the client may have it a moment before.
        deadline = time.monotonic() + 5
        while srv.snapshot().served < 400 and time.monotonic() < deadline:
            time.sleep(0.01)
        counts = srv.snapshot()
    finally:
        for conn in conns:
            conn.close()
        srv.close()
    assert (counts.connections, counts.received, counts.served) == (200, 400, 400)


def test_the_upstream_refuses_a_head_without_end() -> None:
    srv = HttpServer(0).start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as conn:
            conn.settimeout(5)
            conn.sendall(b"GET /" + b"a" * 70_000)
            got = b""
            while chunk := conn.recv(4096):
                got += chunk
        assert got.startswith(b"HTTP/1.1 400 Bad Request")
        assert srv.snapshot().received == 0
    finally:
        srv.close()


def test_a_response_envoy_would_not_send_is_read_by_h11_as_by_the_fast_path() -> None:
    chunked = (b"HTTP/1.1 503 Unavailable\r\nx-meshctl-epoch: 2\r\nconnection: close\r\n"
               b"transfer-encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n")
    parsed = parse_response(chunked)
    assert parsed is not None
    assert (parsed[0].status, parsed[0].epoch, parsed[0].close, parsed[1]) == (
        503, "2", True, len(chunked))
    with pytest.raises(ProtocolViolation):
        parse_response(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
