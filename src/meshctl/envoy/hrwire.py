"""Envoy's hot-restart messages on the wire: the few meshctl sends and answers, by hand.

Each message is an 8-byte big-endian length, then a `envoy.HotRestartMessage` protobuf
(source/server/hot_restart.proto). The field numbers below were read from the descriptor that
Envoy 1.40.0's binary embeds (the same in 1.36-1.40: hot-restart version 11.104):

    HotRestartMessage { Request request = 1; Reply reply = 2;
                        bool didnt_recognize_your_last_message = 3; }
    Request (oneof)   { PassListenSocket pass_listen_socket = 1; ShutdownAdmin shutdown_admin = 2;
                        Stats stats = 3; DrainListeners drain_listeners = 4;
                        Terminate terminate = 5; ForwardedUdpPacket forwarded_udp_packet = 6;
                        TestConnection test_connection = 7; }
    Request.PassListenSocket { string address = 1; uint32 worker_index = 2;
                               string network_namespace = 3; }
    Reply (oneof)     { PassListenSocket pass_listen_socket = 1; ShutdownAdmin shutdown_admin = 2;
                        Stats stats = 3; }
    Reply.PassListenSocket { int32 fd = 1; }   (the fd itself travels as SCM_RIGHTS)
    Reply.ShutdownAdmin    { uint64 original_start_time_unix_seconds = 1;
                             bool enable_reuse_port_default = 2; }

No protobuf dependency: five small messages do not need one, and the stand-in that speaks them
runs inside the supervisor.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct(">Q")
MAX_DATAGRAM = 4096  # Envoy's MaxSendmsgSize: larger messages are split, ours never are


class Req(enum.IntEnum):
    """The Request oneof's field numbers."""

    PASS_LISTEN_SOCKET = 1
    SHUTDOWN_ADMIN = 2
    STATS = 3
    DRAIN_LISTENERS = 4
    TERMINATE = 5
    FORWARDED_UDP_PACKET = 6
    TEST_CONNECTION = 7


class WireError(ValueError):
    """A frame that is not a hot-restart message we can read."""


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # protobuf encodes negative int32/int64 as ten-byte varints
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    """A varint field (wire type 0)."""
    return _varint(number << 3) + _varint(value)


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """The top-level fields of one message: (number, int for varints or bytes)."""
    out: list[tuple[int, int | bytes]] = []
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            out.append((number, value))
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise WireError("truncated field")
            out.append((number, data[pos:pos + length]))
            pos += length
        elif wire_type == 5:
            pos += 4
        elif wire_type == 1:
            pos += 8
        else:
            raise WireError(f"wire type {wire_type} not expected")
    return out


def frame(message: bytes) -> bytes:
    return HEADER.pack(len(message)) + message


def unframe(datagram: bytes) -> bytes:
    """The message of one datagram (meshctl's messages and the ones it reads fit in one)."""
    if len(datagram) < HEADER.size:
        raise WireError("shorter than its length header")
    (length,) = HEADER.unpack_from(datagram)
    body = datagram[HEADER.size:]
    if length != len(body):
        raise WireError(f"announces {length} bytes, carries {len(body)}")
    return body


# ------------------------------------------------------------------ requests (child -> parent)

def pass_listen_socket_request(address: str, worker_index: int) -> bytes:
    inner = _field(1, address.encode()) + (_int_field(2, worker_index) if worker_index else b"")
    return frame(_field(1, _field(Req.PASS_LISTEN_SOCKET, inner)))


def empty_request() -> bytes:
    """A request with no kind set: a parent answers it `didnt_recognize_your_last_message`,
    and does nothing else. Sent last, its answer proves no earlier reply is still on its way."""
    return frame(_field(1, b""))


@dataclass(frozen=True)
class Request:
    kind: int | None
    """A `Req` value (an int for kinds this table does not know), None when no kind is set."""
    address: str = ""
    worker_index: int = 0


def parse_request(datagram: bytes) -> Request | None:
    """The request in one datagram, or None if it is not a request."""
    try:
        top = fields(unframe(datagram))
        request = next((v for n, v in top if n == 1 and isinstance(v, bytes)), None)
        if request is None:
            return None
        inner = fields(request)
    except WireError:
        return None
    if not inner:
        return Request(kind=None)
    kind, body = inner[0]
    if kind == Req.PASS_LISTEN_SOCKET and isinstance(body, bytes):
        try:
            sub = fields(body)
        except WireError:
            return None
        address = next((v for n, v in sub if n == 1 and isinstance(v, bytes)), b"")
        worker = next((v for n, v in sub if n == 2 and isinstance(v, int)), 0)
        return Request(kind=kind, address=address.decode(errors="replace"), worker_index=worker)
    return Request(kind=kind)


# ------------------------------------------------------------------ replies (parent -> child)

def pass_listen_socket_reply(fd: int) -> bytes:
    """fd -1: no such socket. Otherwise the fd must travel beside it as SCM_RIGHTS."""
    return frame(_field(2, _field(1, _int_field(1, fd))))


def shutdown_admin_reply(original_start_time_s: int, reuse_port_default: bool) -> bytes:
    inner = _int_field(1, original_start_time_s) + (_int_field(2, 1) if reuse_port_default
                                                      else b"")
    return frame(_field(2, _field(2, inner)))


def empty_stats_reply() -> bytes:
    return frame(_field(2, _field(3, b"")))


def didnt_recognize() -> bytes:
    return frame(_int_field(3, 1))


@dataclass(frozen=True)
class Reply:
    kind: int | None
    """1 pass_listen_socket, 2 shutdown_admin, 3 stats; None: `didnt_recognize` or empty."""
    fd: int = -1
    didnt_recognize: bool = False


def parse_reply(datagram: bytes) -> Reply:
    top = fields(unframe(datagram))
    if any(n == 3 and v == 1 for n, v in top):
        return Reply(kind=None, didnt_recognize=True)
    reply = next((v for n, v in top if n == 2 and isinstance(v, bytes)), None)
    if reply is None:
        raise WireError("neither a reply nor didnt_recognize")
    inner = fields(reply)
    if not inner:
        return Reply(kind=None)
    kind, body = inner[0]
    if kind == 1 and isinstance(body, bytes):
        fd = next((v for n, v in fields(body) if n == 1 and isinstance(v, int)), 0)
        if fd >= 1 << 63:
            fd -= 1 << 64
        return Reply(kind=1, fd=fd)
    return Reply(kind=kind)
