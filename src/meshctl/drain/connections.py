"""How many client connections a generation still holds, read from the kernel with psutil.

Only connections whose local port is one of the generation's listener ports count: never the
admin port, never upstream connections (their local port is ephemeral). Connections in the
kernel's accept queue are not the process's yet and do not count: they belong to the shared
listen socket, which the new generation accepts from.
"""

from __future__ import annotations

from collections.abc import Iterable

import psutil

# States in which a client may still get bytes from this process.
_OPEN_STATES = frozenset({
    psutil.CONN_ESTABLISHED, psutil.CONN_SYN_RECV, psutil.CONN_CLOSE_WAIT,
})


def count_downstream(pid: int, listener_ports: Iterable[int]) -> int | None:
    """Open client connections of `pid` on `listener_ports`; None if the process is gone."""
    ports = frozenset(listener_ports)
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return None
    return sum(
        1 for c in conns
        if c.status in _OPEN_STATES and c.laddr and c.laddr.port in ports and c.raddr
    )
