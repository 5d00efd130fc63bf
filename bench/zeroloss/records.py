"""The record of one request attempt, the names of its outcomes, and the accounting.

An attempt ends in exactly one outcome: an HTTP status (`"200"`, `"503"`, ...) when a complete
response was read, else the exact reason there was none. Most reasons are failures; three are
retried once on a new connection, as HTTP clients do for an idempotent request the server did
not get to process (RFC 9110 9.2.2, RFC 9113 6.8), and the request then ends with the retry's
outcome. Retries are counted and reported beside the failures, never hidden.

A request is its attempts (one, or two with a retry); it succeeded when its last attempt got a
2xx. Latency is measured from the request's intended start (open loop: the schedule; closed
loop: when it was sent) to the end of its last attempt, so a stall shows as latency.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

REFUSED = "refused"
"""connect() got ECONNREFUSED: nothing listens on the port."""
CONNECT_TIMEOUT = "connect_timeout"
"""connect() did not finish within the request timeout."""
RESET = "reset"
"""ECONNRESET with the request in flight."""
EOF = "eof"
"""The server closed the connection with the request in flight, before a complete response
(a partial response included)."""
TIMEOUT = "timeout"
"""No complete response within the request timeout."""
STALE = "stale"
"""Retried: a reused keep-alive connection (at least one response read on it) was closed or
reset before any byte of this response, within `STALE_WINDOW_S` of sending it: the keep-alive
race, the server closed the idle connection as the request went out. (Later, the server had
the request: that is `eof` or `reset`, a failure.)"""
STALE_WINDOW_S = 0.05
"""A close that is the keep-alive race arrives within a loopback round trip of the request
(microseconds); 50 ms leaves room for a busy machine. A request the server held longer and then
lost is not retried: it may have been processed (the upstream's count says whether it was)."""
GOAWAY = "goaway"
"""Retried: an HTTP/2 stream above the last stream id of the server's GOAWAY, which the server
says it did not process (RFC 9113 6.8)."""
H2_RESET_PREFIX = "h2_reset:"
"""The server reset the HTTP/2 stream, followed by the error code (`h2_reset:REFUSED_STREAM`,
retried; any other code is a failure)."""
H2_REFUSED_STREAM = H2_RESET_PREFIX + "REFUSED_STREAM"
NOT_SENT = "not_sent"
"""The client never sent the request: its run ended with the request still queued."""
ERROR_PREFIX = "error:"
"""Anything else, followed by the exception or errno name."""

RETRYABLE = frozenset({STALE, GOAWAY, H2_REFUSED_STREAM})

MODES = ("h1", "h1-new", "h2")
"""h1: HTTP/1.1 keep-alive connections; h1-new: HTTP/1.1, a new connection per request
(`connection: close`); h2: HTTP/2 with prior knowledge (h2c), streams multiplexed on a few
connections."""


def is_ok(outcome: str) -> bool:
    return len(outcome) == 3 and outcome.startswith("2") and outcome.isdigit()


def is_status(outcome: str) -> bool:
    return len(outcome) == 3 and outcome.isdigit()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of one request, as the client saw it. Times are `time.monotonic()` seconds
    (CLOCK_MONOTONIC: one clock for every process of the machine)."""

    request: int
    """The request's number, unique within its worker."""
    worker: int
    mode: str
    attempt: int
    """0 for the first attempt, 1 for its retry."""
    intended_s: float
    """When the request was due (open loop) or first sent (closed loop)."""
    start_s: float
    """When this attempt started (a free lane found; connecting included)."""
    end_s: float
    outcome: str
    epoch: str
    """The `x-meshctl-epoch` response header: the generation that served it ("" if none)."""
    reused: bool
    """Sent on a connection that had served a response before."""

    @property
    def key(self) -> tuple[int, int]:
        return (self.worker, self.request)


COLUMNS = tuple(f.name for f in fields(Attempt))


def to_columns(attempts: Sequence[Attempt]) -> dict[str, list[Any]]:
    """Column-wise, for the file a worker hands back (compact, fast to parse)."""
    return {name: [getattr(a, name) for a in attempts] for name in COLUMNS}


def from_columns(data: dict[str, list[Any]]) -> list[Attempt]:
    cols = [data[name] for name in COLUMNS]
    return [Attempt(*row) for row in zip(*cols, strict=True)]


@dataclass(frozen=True, slots=True)
class Request:
    """A request's attempts folded into one: what its client finally got."""

    worker: int
    request: int
    mode: str
    intended_s: float
    end_s: float
    outcome: str
    epoch: str
    attempts: int
    first_outcome: str

    @property
    def ok(self) -> bool:
        return is_ok(self.outcome)

    @property
    def latency_s(self) -> float:
        return self.end_s - self.intended_s

    @property
    def retried(self) -> bool:
        return self.attempts > 1


def fold(attempts: Iterable[Attempt]) -> list[Request]:
    """One Request per request number, from its attempts in order; sorted by intended start."""
    by_key: dict[tuple[int, int], list[Attempt]] = {}
    for a in attempts:
        by_key.setdefault(a.key, []).append(a)
    out = []
    for (worker, request), group in by_key.items():
        group.sort(key=lambda a: a.attempt)
        first, last = group[0], group[-1]
        out.append(Request(worker=worker, request=request, mode=first.mode,
                           intended_s=first.intended_s, end_s=last.end_s,
                           outcome=last.outcome, epoch=last.epoch, attempts=len(group),
                           first_outcome=first.outcome))
    out.sort(key=lambda r: r.intended_s)
    return out


@dataclass
class Accounting:
    """The totals of a set of requests: every request in exactly one outcome."""

    requests: int
    attempts: int
    ok: int
    failed: int
    outcomes: dict[str, int]
    """Final outcome -> requests."""
    retried: dict[str, int]
    """The first attempt's outcome -> requests that were retried after it."""
    by_epoch: dict[str, int]
    """Serving generation -> requests answered (any status)."""
    by_mode: dict[str, dict[str, int]]

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "attempts": self.attempts, "ok": self.ok,
                "failed": self.failed, "outcomes": self.outcomes, "retried": self.retried,
                "by_epoch": self.by_epoch, "by_mode": self.by_mode}


def account(requests: Sequence[Request], attempts: int | None = None) -> Accounting:
    outcomes: Counter[str] = Counter()
    retried: Counter[str] = Counter()
    by_epoch: Counter[str] = Counter()
    by_mode: dict[str, Counter[str]] = {}
    for r in requests:
        outcomes[r.outcome] += 1
        if r.retried:
            retried[r.first_outcome] += 1
        if r.epoch:
            by_epoch[r.epoch] += 1
        mode = by_mode.setdefault(r.mode, Counter())
        mode["requests"] += 1
        mode["failed"] += 0 if r.ok else 1
        mode["retried"] += 1 if r.retried else 0
    ok = sum(n for outcome, n in outcomes.items() if is_ok(outcome))
    return Accounting(
        requests=len(requests),
        attempts=sum(r.attempts for r in requests) if attempts is None else attempts,
        ok=ok, failed=len(requests) - ok,
        outcomes=dict(sorted(outcomes.items())), retried=dict(sorted(retried.items())),
        by_epoch=dict(sorted(by_epoch.items(), key=lambda kv: _epoch_key(kv[0]))),
        by_mode={m: dict(c) for m, c in sorted(by_mode.items())},
    )


def _epoch_key(epoch: str) -> tuple[int, str]:
    return (int(epoch), "") if epoch.isdigit() else (1 << 30, epoch)


def sorted_epochs(epochs: Iterable[str]) -> list[str]:
    return sorted(set(epochs), key=_epoch_key)


def iter_failures(requests: Iterable[Request]) -> Iterator[Request]:
    return (r for r in requests if not r.ok)
