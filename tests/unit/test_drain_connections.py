"""Counting a process's client connections from the kernel, on real sockets."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import psutil
import pytest

from meshctl.drain.connections import _open_tcp_sockets_proc, count_downstream, open_tcp_sockets


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def test_accepted_client_connections_on_a_listener_port_are_counted(
        listener: socket.socket) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    accepted = [listener.accept()[0] for _ in clients]
    try:
        # The process holds both ends; only the server ends have the listener port as their
        # local port.
        assert count_downstream(os.getpid(), [port_of(listener)]) == 3
    finally:
        for s in clients + accepted:
            s.close()


def test_connections_still_in_the_accept_queue_are_not_counted(listener: socket.socket) -> None:
    client = socket.create_connection(listener.getsockname())
    try:
        assert count_downstream(os.getpid(), [port_of(listener)]) == 0
    finally:
        client.close()


def test_other_ports_and_closed_connections_are_not_counted(listener: socket.socket) -> None:
    client = socket.create_connection(listener.getsockname())
    server_end, _ = listener.accept()
    with socket.create_server(("127.0.0.1", 0)) as other:
        assert count_downstream(os.getpid(), [port_of(other)]) == 0
    client.close()
    server_end.close()
    assert count_downstream(os.getpid(), [port_of(listener)]) == 0


def test_it_agrees_with_psutil(listener: socket.socket) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
    accepted = [listener.accept()[0] for _ in clients]
    try:
        port = port_of(listener)
        expected = sum(1 for c in psutil.Process().net_connections("tcp")
                       if c.laddr and c.laddr.port == port and c.raddr
                       and c.status == psutil.CONN_ESTABLISHED)
        assert count_downstream(os.getpid(), [port]) == expected == 5
    finally:
        for s in clients + accepted:
            s.close()


def test_a_process_that_is_gone_gives_none() -> None:
    proc = psutil.Popen(["true"])
    proc.wait()
    assert count_downstream(proc.pid, [80]) is None


def test_no_listener_ports_count_nothing() -> None:
    assert count_downstream(os.getpid(), []) == 0


def test_netlink_and_the_proc_fallback_see_the_same_sockets(listener: socket.socket) -> None:
    clients = [socket.create_connection(listener.getsockname()) for _ in range(4)]
    accepted = [listener.accept()[0] for _ in clients]
    try:
        port = port_of(listener)
        via_netlink = {i for p, i in open_tcp_sockets() if p == port}
        via_proc = {i for p, i in _open_tcp_sockets_proc(os.getpid()) if p == port}
        assert via_netlink == via_proc and len(via_netlink) == 4
    finally:
        for s in clients + accepted:
            s.close()
