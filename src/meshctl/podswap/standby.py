"""`meshctl standby`: what a proxy slot runs while it stands by (the standby image's ENTRYPOINT).

It serves nothing but its health port: `/healthz/ready` is 200 (a standby slot is as it should
be, so it must not hold the pod NotReady), `/healthz/live` 200, and `/metrics` with
`meshctl_standby 1`, which tells a standing-by slot from a serving one. It exits 0 on
SIGTERM or SIGINT, at once: there is nothing to drain.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType

from prometheus_client import Gauge

from meshctl.exitcodes import ExitCode
from meshctl.manager.health import HealthServer
from meshctl.manager.metrics import Metrics

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_TICK_S = 0.1


def run_standby(slot: str | None, health: tuple[str, int] | None,
                ready_line: Callable[[str], None] | None = None) -> ExitCode:
    """Serve the health port until SIGTERM/SIGINT. `ready_line` gets one line once serving."""
    received: list[int] = []

    def record(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)  # only recorded: the loop below acts on it

    previous = {s: signal.signal(s, record) for s in STOP_SIGNALS}
    server: HealthServer | None = None
    try:
        if health is not None:
            metrics = Metrics()
            Gauge("meshctl_standby", "1 while this proxy slot runs the standby image.",
                  registry=metrics.registry).set(1)
            server = HealthServer(health[0], health[1], lambda: (True, "standby"), metrics)
            server.start()
        where = f"{server.host}:{server.port}" if server else "off"
        line = f"meshctl standby: slot {slot or '?'} standing by; health port {where}"
        log.info(line)
        if ready_line is not None:
            ready_line(line)
        while not received:
            time.sleep(_TICK_S)
        log.info("meshctl standby: %s, exiting", signal.Signals(received[0]).name)
        return ExitCode.OK
    finally:
        if server is not None:
            server.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
