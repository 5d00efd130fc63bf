"""Why a request failed, from what its client saw and which processes the run killed. Pure.

The load client (`chaos.load`) keeps every failed request with the outcome zeroloss names
(`zeroloss.records`), whether its connection was opened for it, and the generation that last
answered on that connection (its `x-meshctl-epoch`). The run keeps every SIGKILL it sent, with
the generation's epoch and the moment. From the two:

- refused: connect() got ECONNREFUSED, nothing listened on the port;
- new_connection_at_kill: a connection opened for this request was accepted, then reset or
  closed before a response, within `NEW_CONNECTION_KILL_WINDOW_S` of a SIGKILL: accepted by
  the process that was killed (in flight on it), or, when nothing else holds the listening
  socket, queued in that socket's backlog as it closed with the process;
- new_connection: the same anywhere else (a listening socket closed under its queue);
- in_flight_on_dead_process: a request on an established keep-alive connection, lost because
  the process at the other end was killed (its epoch was SIGKILLed within `KILL_WINDOW_S`);
  no proxy can save these, so they are reported apart;
- established: an established connection lost otherwise (a forced close, a crash restart
  ending the old generation): a failure meshctl owns;
- timeout: no connection or no response within the client's timeout;
- http_status: a complete response that is not 2xx.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from zeroloss import records

KILL_WINDOW_S = 1.0
"""A SIGKILLed process's connections are reset or closed by the kernel at once: an in-flight
request fails within a loopback round trip of the kill, an idle keep-alive connection at its
next request. A second covers a client lane that was between requests then."""
NEW_CONNECTION_KILL_WINDOW_S = 0.1
"""A new connection dies with the process that accepted it, at the kill: a tenth of a second
covers the client's event loop on a loaded machine, and no more. (Connections reset 0.23 s
after a kill were measured here, when a recovery generation bound new listening sockets and
the supervisor closed the ones it held with connections queued: meshctl's loss, not the
kill's.)"""
_CLOCK_SLACK_S = 0.05
"""The kill is recorded just before os.kill: a failure can end a hair before the record."""


class Cause(enum.StrEnum):
    REFUSED = "refused"
    NEW_CONNECTION_AT_KILL = "new_connection_at_kill"
    NEW_CONNECTION = "new_connection"
    DEAD_PROCESS = "in_flight_on_dead_process"
    ESTABLISHED = "established"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"


class FailureJSON(TypedDict):
    t_s: float
    outcome: str
    new_connection: bool
    conn_epoch: str


@dataclass(frozen=True)
class Failure:
    """One failed request, as its client saw it."""

    t_s: float
    """When its last attempt ended (time.monotonic)."""
    outcome: str
    """The zeroloss outcome of its last attempt: `refused`, `reset`, `eof`, `503`, ..."""
    new_connection: bool
    """The connection was opened for this request (no response read on it before)."""
    conn_epoch: str
    """The generation that last answered on the connection ("" for a new connection)."""

    def to_json(self) -> FailureJSON:
        return {"t_s": round(self.t_s, 4), "outcome": self.outcome,
                "new_connection": self.new_connection, "conn_epoch": self.conn_epoch}


@dataclass(frozen=True)
class Kill:
    """One SIGKILL the run sent to a generation."""

    t_s: float
    epoch: int
    pid: int


def classify(failure: Failure, kills: Sequence[Kill]) -> Cause:
    outcome = failure.outcome
    if records.is_status(outcome):
        return Cause.HTTP_STATUS
    if outcome == records.REFUSED:
        return Cause.REFUSED
    if outcome in (records.TIMEOUT, records.CONNECT_TIMEOUT):
        return Cause.TIMEOUT
    if failure.new_connection:
        at_kill = any(_within(failure, k, NEW_CONNECTION_KILL_WINDOW_S) for k in kills)
        return Cause.NEW_CONNECTION_AT_KILL if at_kill else Cause.NEW_CONNECTION
    if any(str(k.epoch) == failure.conn_epoch and _within(failure, k, KILL_WINDOW_S)
           for k in kills):
        return Cause.DEAD_PROCESS
    return Cause.ESTABLISHED


def _within(failure: Failure, kill: Kill, window_s: float) -> bool:
    return kill.t_s - _CLOCK_SLACK_S <= failure.t_s <= kill.t_s + window_s


def count(failures: Iterable[Failure], kills: Sequence[Kill]) -> dict[str, int]:
    """Failures per cause, every cause named."""
    counts = Counter(classify(f, kills) for f in failures)
    return {c.value: counts.get(c, 0) for c in Cause}
