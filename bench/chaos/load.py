"""The chaos run's load: HTTP/1.1 requests through the proxy for the whole run, every failure
kept with what `chaos.causes` needs to say why it failed.

It is zeroloss's client on the wire (its `H1Connection`, its outcome names and its one retry of
a keep-alive connection the server had closed as the request went out, as HTTP clients do), in
a shape the proof's does not have: lanes that run until stopped rather than for a planned
duration, counts kept as they go rather than every attempt (a long run makes millions), and,
for each failure, the generation that last answered on its connection, which tells a request
lost with a killed process from one meshctl lost.

Two kinds of lanes, closed loop with a short pause: keep-alive lanes (one connection each,
reopened when the server closes it) and new-connection lanes (a connection per request,
`connection: close`): the first see what happens to established connections, the second what
happens to connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field

from chaos.causes import Failure
from zeroloss import records
from zeroloss.client import connect_outcome, response_outcome
from zeroloss.protocols import H1Connection, request_bytes

MAX_FAILURES_KEPT = 200_000
"""Beyond this the failures are counted but not kept (a run that refuses for minutes)."""


@dataclass(frozen=True)
class LoadSpec:
    keepalive_lanes: int = 4
    new_connection_lanes: int = 2
    pause_s: float = 0.002
    """Between two requests of a lane: ~1,500 requests/s in all on this 2-core machine, enough
    to hit every fault's moment and leave CPU to Envoy, the supervisor and the CLI."""
    timeout_s: float = 5.0
    """Per attempt, connecting included: longer than any SIGSTOP of the schedule (3 s), so a
    stopped generation shows as latency, not as a timeout."""


@dataclass
class Tally:
    """What the load did so far (written by the load's thread, read by the run's)."""

    requests: int = 0
    ok: int = 0
    retried: int = 0
    """Requests retried once after a keep-alive connection closed under them (`stale`)."""
    refused_connects: int = 0
    """connect() calls refused, retries included."""
    failed: int = 0
    failures: list[Failure] = field(default_factory=list)


@dataclass
class _Lane:
    keepalive: bool
    raw: bytes
    conn: H1Connection | None = None
    epoch: str = ""
    """The generation that last answered on `conn`."""


class ChaosLoad:
    """The lanes, on an asyncio loop in a thread of their own, until `stop()`."""

    def __init__(self, host: str, port: int, spec: LoadSpec) -> None:
        self.host, self.port, self.spec = host, port, spec
        self.tally = Tally()
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="chaos-load", daemon=True)

    def start(self) -> ChaosLoad:
        self._thread.start()
        return self

    def stop(self) -> Tally:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop_now)
            self._thread.join(self.spec.timeout_s + 10)
        return self.tally

    def _stop_now(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        authority = f"{self.host}:{self.port}"
        lanes = ([_Lane(True, request_bytes("/", authority, close=False))
                  for _ in range(self.spec.keepalive_lanes)]
                 + [_Lane(False, request_bytes("/", authority, close=True))
                    for _ in range(self.spec.new_connection_lanes)])
        tasks = [asyncio.create_task(self._lane(lane)) for lane in lanes]
        await self._stopping.wait()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for lane in lanes:
            if lane.conn is not None:
                lane.conn.abort()
        await asyncio.sleep(0)  # let the transports finish closing

    async def _lane(self, lane: _Lane) -> None:
        while True:
            await self._request(lane)
            await asyncio.sleep(self.spec.pause_s)

    async def _request(self, lane: _Lane) -> None:
        """One request: retried once on a new connection when the keep-alive connection was
        closed as it went out (`records.STALE`), as zeroloss does and HTTP clients do."""
        tally = self.tally
        for attempt in range(2):
            new = lane.conn is None or lane.conn.closed or lane.conn.responses == 0
            conn_epoch = "" if new else lane.epoch
            outcome = await self._attempt(lane)
            if outcome == records.REFUSED:
                tally.refused_connects += 1
            if outcome in records.RETRYABLE and attempt == 0:
                tally.retried += 1
                continue
            break
        tally.requests += 1
        if records.is_ok(outcome):
            tally.ok += 1
            return
        tally.failed += 1
        if len(tally.failures) < MAX_FAILURES_KEPT:
            tally.failures.append(Failure(t_s=time.monotonic(), outcome=outcome,
                                          new_connection=new, conn_epoch=conn_epoch))

    async def _attempt(self, lane: _Lane) -> str:
        """The outcome of one attempt (an HTTP status, or zeroloss's name of the failure)."""
        loop = asyncio.get_running_loop()
        connected = reused = False
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                if lane.conn is None or lane.conn.closed:
                    lane.conn, lane.epoch = None, ""
                    _, lane.conn = await loop.create_connection(H1Connection, self.host,
                                                                self.port)
                connected = True
                reused = lane.conn.responses > 0
                response = await lane.conn.request(lane.raw)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every way a request can end is an outcome
            if lane.conn is not None:
                lane.conn.abort()
            lane.conn, lane.epoch = None, ""
            return response_outcome(exc, reused=reused) if connected else connect_outcome(exc)
        lane.epoch = response.epoch
        if not lane.keepalive and lane.conn is not None:
            lane.conn.close()
            lane.conn = None
        return str(response.status)
