"""HTTP/1.1 and HTTP/2 client connections as asyncio protocols: one request in, one response
(status and serving generation) or one exact exception out.

Both are small on purpose: the load client must tell apart every way a request can end (refused,
reset, closed before the first byte of the response, closed mid-response, reset stream, GOAWAY),
which general-purpose clients fold into one exception, and it must be cheap per request.

HTTP/1.1 responses of the shape Envoy sends are read by hand (`parse_response` says why, with
the figure); any other shape by the sans-I/O `h11` library. HTTP/2 uses its sibling `h2`, with
one correction: h2 treats any GOAWAY as the end of the connection (its state machine goes to
CLOSED, and a frame for a stream still in flight then raises ProtocolError; python-hyper/h2
issue #1181). RFC 9113 6.8 says the streams up to the
GOAWAY's last stream id complete normally, which is exactly how Envoy drains an HTTP/2
connection (a GOAWAY first, the in-flight streams answered, then the close).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h11
from hyperframe.frame import Frame, GoAwayFrame

EPOCH_HEADER = "x-meshctl-epoch"
_EPOCH_HEADER_BYTES = EPOCH_HEADER.encode()
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    epoch: str
    close: bool
    """HTTP/1.1: the server said `connection: close` (a draining Envoy does)."""


class ConnectionLost(Exception):
    """The connection ended with the request in flight, `after_s` seconds after the request was
    written and after `received` bytes of the response (`cause`: the socket error, None for a
    clean EOF)."""

    def __init__(self, cause: BaseException | None, received: int, after_s: float) -> None:
        super().__init__(f"connection lost {after_s:.3f}s after the request, after {received} "
                         f"response bytes: {cause!r}")
        self.cause = cause
        self.received = received
        self.after_s = after_s


class ProtocolViolation(Exception):
    """The response could not be parsed."""


class StreamReset(Exception):
    """The server reset the HTTP/2 stream (RST_STREAM) with `code`."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class GoawayUnprocessed(Exception):
    """The HTTP/2 stream is above the last stream id of the server's GOAWAY: not processed."""


# --------------------------------------------------------------------------- HTTP/1.1


def request_bytes(path: str, authority: str, *, close: bool) -> bytes:
    head = f"GET {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: meshctl-proof\r\n"
    if close:
        head += "connection: close\r\n"
    return (head + "\r\n").encode("latin-1")


def parse_response(buf: bytes | bytearray, *, eof: bool = False
                   ) -> tuple[Response, int] | None:
    """(response, bytes consumed) once `buf` holds a complete response; None while it does not.
    Raises ProtocolViolation. `eof`: the connection has ended (a body delimited by the close
    is then complete).

    By hand only for the one shape Envoy answers the benchmark with (a final status, a
    content-length or no body); anything else (chunked, an interim 1xx, a body ended by the
    close) goes to h11. Not h11 for all: on this machine (2026-12-07, a micro-benchmark of
    one request and its 193-byte response, 20,000 times on one connection) h11 took 44.9 us
    per request against 3.4 us by hand: +41 us on the 167 us the client spends per HTTP/1.1
    keep-alive request (docs/latency.md), a fifth fewer requests from a client whose CPU sets
    the benchmark's highest rate."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > _MAX_HEAD:
            raise ProtocolViolation("response head too large")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolViolation(f"bad status line {lines[0][:80]!r}")
    status = int(parts[1])
    length: int | None = None
    close = False
    epoch = ""
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        val = value.strip()
        if key == b"content-length":
            try:
                length = int(val)
            except ValueError:
                raise ProtocolViolation(f"bad content-length {val[:40]!r}") from None
        elif key == b"transfer-encoding":
            return _parse_with_h11(buf, eof=eof)
        elif key == b"connection":
            close = b"close" in val.lower()
        elif key == _EPOCH_HEADER_BYTES:
            epoch = val.decode("latin-1")
    body = end + 4
    if status in (204, 304):
        return Response(status, epoch, close), body
    if status < 200 or length is None:
        return _parse_with_h11(buf, eof=eof)
    if len(buf) < body + length:
        return None
    return Response(status, epoch, close), body + length


def _parse_with_h11(buf: bytes | bytearray, *, eof: bool) -> tuple[Response, int] | None:
    """`parse_response` for the shapes Envoy does not send the benchmark: h11 reads them."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "benchmark")]))
    conn.send(h11.EndOfMessage())
    try:
        conn.receive_data(bytes(buf))
        if eof:
            conn.receive_data(b"")
        response: Response | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.Response):
                epoch = dict(event.headers).get(_EPOCH_HEADER_BYTES, b"").decode("latin-1")
                response = Response(event.status_code, epoch, False)
            elif isinstance(event, h11.EndOfMessage) and response is not None:
                close = eof or conn.their_state in (h11.MUST_CLOSE, h11.CLOSED)
                consumed = len(buf) - len(conn.trailing_data[0])
                return Response(response.status, response.epoch, close), consumed
            elif isinstance(event, h11.ConnectionClosed):
                return None
    except h11.RemoteProtocolError as exc:
        raise ProtocolViolation(f"h11: {exc}") from None


class H1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.responses = 0
        """Responses read on this connection: above 0, the connection is being reused."""
        self.closed = False
        self._buf = bytearray()
        self._received = 0
        self._sent_at = 0.0
        self._lost: Exception | None = None
        self._waiter: asyncio.Future[Response] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def request(self, data: bytes) -> asyncio.Future[Response]:
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        if self.transport is None or self.closed:
            # Closed by the server between connect() and now (a stopping Envoy does that).
            waiter.set_exception(ConnectionLost(self._lost, 0, 0.0))
            return waiter
        self._waiter = waiter
        self._buf.clear()
        self._received = 0
        self._sent_at = time.monotonic()
        self.transport.write(data)
        return waiter

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (or after a timeout): the connection is unusable.
            self.abort()
            return
        self._received += len(data)
        self._buf += data
        try:
            parsed = parse_response(self._buf)
        except ProtocolViolation as exc:
            waiter.set_exception(exc)
            self.abort()
            return
        if parsed is not None:
            self._complete(waiter, *parsed)

    def _complete(self, waiter: asyncio.Future[Response], response: Response,
                  consumed: int) -> None:
        self._waiter = None
        self.responses += 1
        del self._buf[:consumed]
        if response.close:
            self.close()
        waiter.set_result(response)

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself; connection_lost says what was in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lost = exc
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._waiter = None
        if exc is None and self._buf:
            with contextlib.suppress(ProtocolViolation):
                parsed = parse_response(self._buf, eof=True)
                if parsed is not None:
                    self.responses += 1
                    waiter.set_result(parsed[0])
                    return
        waiter.set_exception(ConnectionLost(exc, self._received,
                                            time.monotonic() - self._sent_at))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


# --------------------------------------------------------------------------- HTTP/2


class _GracefulH2Connection(h2.connection.H2Connection):
    """h2's connection, minus its reading of GOAWAY as the immediate end of the connection
    (see the module docstring): the event is still reported, the state stays open, and the
    client itself stops opening streams on it."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame],
                                                                  list[h2.events.Event]]:
        self.clear_outbound_data_buffer()
        event = h2.events.ConnectionTerminated()
        try:
            event.error_code = h2.errors.ErrorCodes(frame.error_code)
        except ValueError:
            event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


@dataclass
class _Stream:
    waiter: asyncio.Future[Response]
    sent_at: float
    status: int = 0
    epoch: str = ""
    received: int = 0


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection (h2c, prior knowledge); streams multiplexed."""

    def __init__(self, authority: str) -> None:
        self.authority = authority
        self.conn = _GracefulH2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.goaway_last: int | None = None
        """The last stream id of the server's GOAWAY, once one came: no new stream then."""
        self.closed = False
        self.responses = 0

    @property
    def usable(self) -> bool:
        return not self.closed and self.goaway_last is None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.conn.initiate_connection()
        self._flush()

    def request(self, path: str) -> tuple[int, asyncio.Future[Response]]:
        """(stream id, its response). A connection the server closed or sent a GOAWAY on since
        it was picked fails the request at once (stream id 0)."""
        if not self.usable:
            failed: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
            failed.set_exception(GoawayUnprocessed() if self.goaway_last is not None
                                 else ConnectionLost(None, 0, 0.0))
            return 0, failed
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"),
                                           (":authority", self.authority), (":path", path),
                                           ("user-agent", "meshctl-proof")], end_stream=True)
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.streams[stream_id] = _Stream(waiter, time.monotonic())
        self._flush()
        return stream_id, waiter

    def cancel(self, stream_id: int) -> None:
        """Give up on a stream (timeout): RST_STREAM(CANCEL), the connection stays."""
        if self.streams.pop(stream_id, None) is None or self.closed:
            return
        with contextlib.suppress(h2.exceptions.H2Error):
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._flush()
        self._close_if_done()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.H2Error as exc:
            self._fail_all(ProtocolViolation(f"h2: {exc}"))
            self.abort()
            return
        for event in events:
            self._on_event(event)
        self._flush()
        self._close_if_done()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                for name, value in event.headers or []:
                    if name == b":status":
                        stream.status = int(value)
                    elif name == _EPOCH_HEADER_BYTES:
                        stream.epoch = value.decode("latin-1")
        elif isinstance(event, h2.events.DataReceived):
            if event.stream_id and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length,
                                                    event.stream_id)
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.received += len(event.data or b"")
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None and not stream.waiter.done():
                self.responses += 1
                stream.waiter.set_result(Response(stream.status, stream.epoch, False))
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None and not stream.waiter.done():
                code = event.error_code
                stream.waiter.set_exception(StreamReset(
                    code.name if isinstance(code, h2.errors.ErrorCodes) else str(code)))
        elif isinstance(event, h2.events.ConnectionTerminated):
            last = event.last_stream_id if event.last_stream_id is not None else 0
            self.goaway_last = last if self.goaway_last is None else min(last,
                                                                         self.goaway_last)
            for stream_id in [s for s in self.streams if s > self.goaway_last]:
                stream = self.streams.pop(stream_id)
                if not stream.waiter.done():
                    stream.waiter.set_exception(GoawayUnprocessed())

    def _close_if_done(self) -> None:
        """After a GOAWAY, once nothing is in flight, close: a client does not keep a connection
        the server asked it to leave (a draining Envoy counts it until it is closed)."""
        if self.goaway_last is not None and not self.streams and not self.closed:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in self.streams.values():
            if not stream.waiter.done():
                stream.waiter.set_exception(ConnectionLost(exc, stream.received,
                                                           time.monotonic() - stream.sent_at))
        self.streams.clear()

    def _fail_all(self, exc: Exception) -> None:
        for stream in self.streams.values():
            if not stream.waiter.done():
                stream.waiter.set_exception(exc)
        self.streams.clear()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
