"""How many client connections a generation still holds, read from the kernel.

Only connections whose local port is one of the generation's listener ports count: never the
admin port, never upstream connections (their local port is ephemeral). Connections in the
kernel's accept queue are not the process's yet and do not count: they belong to the shared
listen socket, which the new generation accepts from.

How: the kernel's sock_diag netlink interface, asked for TCP sockets in the open states only
(ESTABLISHED, SYN_RECV, CLOSE_WAIT); a socket counts if its local port is a listener port and
its inode is one of the process's file descriptors. The state filter runs in the kernel, so
the answer stays small on a busy proxy, whose TCP table holds tens of thousands of TIME_WAIT
entries: reading /proc/net/tcp (what psutil's `net_connections()` does) took 125 ms per
sample with 34k entries here, a good share of a core at the drain's sampling rate. The /proc
tables remain as a fallback where netlink is refused.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
from collections.abc import Iterable, Iterator

_TCP_ESTABLISHED, _TCP_SYN_RECV, _TCP_CLOSE_WAIT = 1, 3, 8
_OPEN_STATES_MASK = (1 << _TCP_ESTABLISHED) | (1 << _TCP_SYN_RECV) | (1 << _TCP_CLOSE_WAIT)

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
# inet_diag_req_v2: family, protocol, ext, pad, states, then a zeroed inet_diag_sockid.
_DIAG_REQ = struct.Struct("=BBBBI48x")
_SPORT_OFFSET, _INODE_OFFSET = 4, 68  # in inet_diag_msg


def socket_inodes(pid: int) -> set[int] | None:
    """The inodes of the sockets `pid` holds; None if the process is gone or not ours."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def open_tcp_sockets() -> Iterator[tuple[int, int]]:
    """(local port, inode) of every TCP socket of this network namespace in an open state,
    from sock_diag. Raises OSError if netlink is not available."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(2.0)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            body = _DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 0, _OPEN_STATES_MASK)
            header = _NLMSG_HDR.pack(_NLMSG_HDR.size + len(body), _SOCK_DIAG_BY_FAMILY,
                                     _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
            nl.sendto(header + body, (0, 0))
            yield from _read_dump(nl)


def _read_dump(nl: socket.socket) -> Iterator[tuple[int, int]]:
    while True:
        data = nl.recv(1 << 16)
        offset = 0
        while offset + _NLMSG_HDR.size <= len(data):
            length, kind, _, _, _ = _NLMSG_HDR.unpack_from(data, offset)
            if kind == _NLMSG_DONE:
                return
            if kind == _NLMSG_ERROR:
                (errno,) = struct.unpack_from("=i", data, offset + _NLMSG_HDR.size)
                raise OSError(-errno, "sock_diag dump refused")
            msg = offset + _NLMSG_HDR.size
            (sport,) = struct.unpack_from("!H", data, msg + _SPORT_OFFSET)
            (inode,) = struct.unpack_from("=I", data, msg + _INODE_OFFSET)
            yield sport, inode
            offset += (length + 3) & ~3
        if not data:
            return


# Fallback: /proc/<pid>/net/tcp{,6}, columns "sl local rem st ... uid timeout inode".
_PROC_LINE = re.compile(r"^\s*\d+: [0-9A-F]+:([0-9A-F]{4}) \S+ (01|03|08) \S+ \S+ \S+\s+\d+\s+\d+ "
                        r"(\d+)", re.MULTILINE)


def _open_tcp_sockets_proc(pid: int) -> Iterator[tuple[int, int]]:
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError):
            with open(f"/proc/{pid}/net/{table}") as f:
                text = f.read()
            for match in _PROC_LINE.finditer(text):
                yield int(match.group(1), 16), int(match.group(3))


def count_downstream(pid: int, listener_ports: Iterable[int]) -> int | None:
    """Open client connections of `pid` on `listener_ports`; None if the process is gone."""
    ports = frozenset(listener_ports)
    inodes = socket_inodes(pid)
    if inodes is None:
        return None
    if not ports:
        return 0
    try:
        sockets = list(open_tcp_sockets())
    except OSError:
        sockets = list(_open_tcp_sockets_proc(pid))
    # A set: a dump of a changing table may show a socket twice.
    return len({inode for port, inode in sockets if port in ports and inode in inodes})
