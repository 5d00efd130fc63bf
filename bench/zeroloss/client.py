"""The load client: every request recorded (intended start, start, end, outcome, generation).

A plan is a list of lane groups, one per traffic mode (`records.MODES`). A lane sends one
request at a time: its own keep-alive connection (h1), a new connection per request (h1-new),
or a stream on one of the group's few shared connections (h2).

Two schedules:
- open loop (`rate` > 0): requests are due at `start + i / rate`, whatever happens; a due request
  waits in a queue until a lane is free, and its latency runs from when it was due. A stall
  shows as latency and as queued requests, never as fewer requests.
- closed loop (`rate` 0): each lane sends its next request as soon as the last one ended; the
  highest rate the client and server sustain together.

Python cannot reach wrk's rate in one process, so a load runs as several worker processes
(`LoadRun`), each given its share of the rate and lanes, started together on a common
monotonic start time; each writes its attempts to a file the parent merges.

    python -m zeroloss.client --target 127.0.0.1:PORT --plan JSON --worker N --out FILE

prints `ready`, reads `start MONOTONIC_S` on stdin, runs (a `stop` line ends it early), writes
FILE and prints `done N`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import itertools
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from zeroloss import records
from zeroloss.protocols import (
    ConnectionLost,
    GoawayUnprocessed,
    H1Connection,
    H2Connection,
    ProtocolViolation,
    Response,
    StreamReset,
    request_bytes,
)
from zeroloss.records import Attempt


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Target:
        host, _, port = text.rpartition(":")
        return cls(host or "127.0.0.1", int(port))


@dataclass(frozen=True)
class LaneGroup:
    """The requests of one mode."""

    mode: str
    """h1, h1-new or h2 (see `records.MODES`)."""
    lanes: int
    """Requests in flight at most (each lane: one at a time)."""
    rate: float = 0.0
    """Requests per second, open loop; 0: closed loop (as fast as the lanes go)."""
    path: str = "/"
    h2_connections: int = 2
    """h2 only: connections the lanes share (lane i uses connection i mod this)."""

    def __post_init__(self) -> None:
        if self.mode not in records.MODES:
            raise ValueError(f"unknown mode {self.mode!r}; one of {records.MODES}")
        if self.lanes < 1 or self.rate < 0:
            raise ValueError("lanes must be >= 1 and rate >= 0")


@dataclass(frozen=True)
class LoadPlan:
    groups: tuple[LaneGroup, ...]
    duration_s: float
    """Requests are due (open loop) or sent (closed loop) during this long."""
    timeout_s: float = 10.0
    """Per attempt, connecting included."""
    retries: int = 1
    """Retries of a request the server provably did not process (`records.RETRYABLE`)."""

    @property
    def rate(self) -> float:
        return sum(g.rate for g in self.groups)

    def share(self, workers: int) -> LoadPlan:
        """One worker's part of the plan when `workers` share it."""
        return replace(self, groups=tuple(
            replace(g, rate=g.rate / workers, lanes=max(1, math.ceil(g.lanes / workers)),
                    h2_connections=max(1, math.ceil(g.h2_connections / workers)))
            for g in self.groups))

    def to_json(self) -> dict[str, Any]:
        return {"groups": [asdict(g) for g in self.groups], "duration_s": self.duration_s,
                "timeout_s": self.timeout_s, "retries": self.retries}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadPlan:
        return cls(groups=tuple(LaneGroup(**g) for g in data["groups"]),
                   duration_s=float(data["duration_s"]), timeout_s=float(data["timeout_s"]),
                   retries=int(data["retries"]))


# --------------------------------------------------------------------------- outcomes


def _os_error_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


def connect_outcome(exc: BaseException) -> str:
    """The outcome of a connect() that failed."""
    if isinstance(exc, ConnectionRefusedError):
        return records.REFUSED
    if isinstance(exc, TimeoutError):
        return records.CONNECT_TIMEOUT
    if isinstance(exc, ConnectionResetError):
        return records.RESET
    if isinstance(exc, OSError):
        return records.ERROR_PREFIX + _os_error_name(exc)
    return records.ERROR_PREFIX + type(exc).__name__


def response_outcome(exc: BaseException, *, reused: bool) -> str:
    """The outcome of a request sent on an open connection that got no complete response."""
    if isinstance(exc, TimeoutError):
        return records.TIMEOUT
    if isinstance(exc, GoawayUnprocessed):
        return records.GOAWAY
    if isinstance(exc, StreamReset):
        return records.H2_RESET_PREFIX + exc.code
    if isinstance(exc, ProtocolViolation):
        return records.ERROR_PREFIX + "protocol"
    if isinstance(exc, ConnectionLost):
        cause = exc.cause
        if (reused and exc.received == 0 and exc.after_s < records.STALE_WINDOW_S
                and (cause is None or isinstance(cause, ConnectionResetError | BrokenPipeError))):
            return records.STALE
        if cause is None or isinstance(cause, BrokenPipeError):
            return records.EOF
        if isinstance(cause, ConnectionResetError):
            return records.RESET
        if isinstance(cause, OSError):
            return records.ERROR_PREFIX + _os_error_name(cause)
        return records.ERROR_PREFIX + type(cause).__name__
    if isinstance(exc, ConnectionResetError):
        return records.RESET
    if isinstance(exc, OSError):
        return records.ERROR_PREFIX + _os_error_name(exc)
    return records.ERROR_PREFIX + type(exc).__name__


# --------------------------------------------------------------------------- running a plan


@dataclass
class _Job:
    request: int
    due_s: float


@dataclass
class _H2Slot:
    conn: H2Connection | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class _Run:
    """One worker's run of a plan: the clock bounds and the attempts so far."""

    def __init__(self, target: Target, plan: LoadPlan, start_at: float, worker: int) -> None:
        self.target, self.plan, self.worker = target, plan, worker
        self.start_at = start_at
        self.end_at = start_at + plan.duration_s
        self.attempts: list[Attempt] = []
        self.ids = itertools.count()
        self.wake = asyncio.Event()

    @property
    def hard_deadline(self) -> float:
        """Past this, queued requests are not sent any more (`not_sent`): bounds the run."""
        return self.end_at + self.plan.timeout_s + 2.0

    def stop(self) -> None:
        """End the run now: no request is due after this."""
        self.end_at = min(self.end_at, time.monotonic())
        self.wake.set()


class _Lane:
    """One lane of a group: one request at a time, with its connection (h1) or slot (h2)."""

    def __init__(self, run: _Run, group: LaneGroup, slot: _H2Slot | None) -> None:
        self.run, self.group, self.slot = run, group, slot
        self.conn: H1Connection | None = None
        t = run.target
        self.raw = request_bytes(group.path, t.authority, close=group.mode == "h1-new")

    async def perform(self, job: _Job) -> None:
        """The request `job`, retried once if the server provably did not process it."""
        run = self.run
        for attempt in range(run.plan.retries + 1):
            start = time.monotonic()
            outcome, epoch, reused = await self._attempt(start + run.plan.timeout_s)
            run.attempts.append(Attempt(
                request=job.request, worker=run.worker, mode=self.group.mode, attempt=attempt,
                intended_s=job.due_s, start_s=start, end_s=time.monotonic(), outcome=outcome,
                epoch=epoch, reused=reused))
            if outcome not in records.RETRYABLE or time.monotonic() >= run.hard_deadline:
                return

    def close(self, *, force: bool = False) -> None:
        """Close the lane's connection; its h2 connection too once nothing is in flight on it
        (`force`: at once)."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        slot = self.slot
        if slot is not None and slot.conn is not None and (force or not slot.conn.streams):
            slot.conn.close()

    def not_sent(self, job: _Job) -> None:
        now = time.monotonic()
        self.run.attempts.append(Attempt(
            request=job.request, worker=self.run.worker, mode=self.group.mode, attempt=0,
            intended_s=job.due_s, start_s=now, end_s=now, outcome=records.NOT_SENT, epoch="",
            reused=False))

    async def _attempt(self, deadline: float) -> tuple[str, str, bool]:
        """(outcome, epoch, reused); never raises (but for cancellation)."""
        if self.group.mode == "h2":
            return await self._attempt_h2(deadline)
        loop = asyncio.get_running_loop()
        connected = False
        reused = False
        try:
            async with asyncio.timeout_at(deadline):
                if self.group.mode == "h1-new" or self.conn is None or self.conn.closed:
                    self.conn = None
                    _, self.conn = await loop.create_connection(
                        H1Connection, self.run.target.host, self.run.target.port)
                connected = True
                reused = self.conn.responses > 0
                response: Response = await self.conn.request(self.raw)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # every way a request can end is an outcome
            if self.conn is not None:
                self.conn.abort()
                self.conn = None
            outcome = (response_outcome(exc, reused=reused) if connected
                       else connect_outcome(exc))
            return outcome, "", reused
        if self.group.mode == "h1-new" and self.conn is not None:
            self.conn.close()
            self.conn = None
        return str(response.status), response.epoch, reused

    async def _attempt_h2(self, deadline: float) -> tuple[str, str, bool]:
        slot = self.slot
        assert slot is not None
        loop = asyncio.get_running_loop()
        conn: H2Connection | None = None
        stream_id = 0
        reused = False
        try:
            async with asyncio.timeout_at(deadline):
                async with slot.lock:
                    if slot.conn is None or not slot.conn.usable:
                        slot.conn = None
                        authority = self.run.target.authority
                        _, slot.conn = await loop.create_connection(
                            lambda: H2Connection(authority), self.run.target.host,
                            self.run.target.port)
                    conn = slot.conn
                reused = conn.responses > 0
                stream_id, waiter = conn.request(self.group.path)
                response = await waiter
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if conn is None:
                return connect_outcome(exc), "", False
            if isinstance(exc, TimeoutError) and stream_id:
                conn.cancel(stream_id)
            return response_outcome(exc, reused=False), "", reused
        return str(response.status), response.epoch, reused


async def run_plan(target: Target, plan: LoadPlan, *, start_at: float | None = None,
                   worker: int = 0,
                   on_run: Callable[[_Run], None] | None = None) -> list[Attempt]:
    """Run `plan` against `target` from `start_at` (monotonic; default now) and return every
    attempt. `on_run` receives the run (its `stop()` ends the run early, thread-safely through
    `loop.call_soon_threadsafe`)."""
    start = time.monotonic() if start_at is None else start_at
    run = _Run(target, plan, start, worker)
    if on_run is not None:
        on_run(run)
    delay = start - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    tasks: list[asyncio.Task[None]] = []
    all_lanes: list[_Lane] = []
    for group in plan.groups:
        slots = [_H2Slot() for _ in range(group.h2_connections)] if group.mode == "h2" else []
        lanes = [_Lane(run, group, slots[i % len(slots)] if slots else None)
                 for i in range(group.lanes)]
        all_lanes += lanes
        if group.rate > 0:
            queue: asyncio.Queue[_Job | None] = asyncio.Queue()
            tasks.append(asyncio.create_task(_dispatch(run, group, queue)))
            tasks += [asyncio.create_task(_open_lane(run, lane, queue)) for lane in lanes]
        else:
            tasks += [asyncio.create_task(_closed_lane(run, lane)) for lane in lanes]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for lane in all_lanes:
            lane.close(force=True)
        await asyncio.sleep(0)  # let the transports finish closing
    return run.attempts


async def _dispatch(run: _Run, group: LaneGroup, queue: asyncio.Queue[_Job | None]) -> None:
    """Put each request in the queue when it is due; then one stop mark per lane."""
    period = 1.0 / group.rate
    n = 0
    while True:
        due = run.start_at + n * period
        if due >= run.end_at:
            break
        wait = due - time.monotonic()
        if wait > 0:
            run.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await run.wake.wait()
            continue
        queue.put_nowait(_Job(next(run.ids), due))
        n += 1
    for _ in range(group.lanes):
        queue.put_nowait(None)


async def _open_lane(run: _Run, lane: _Lane, queue: asyncio.Queue[_Job | None]) -> None:
    while (job := await queue.get()) is not None:
        if time.monotonic() >= run.hard_deadline:
            lane.not_sent(job)
        else:
            await lane.perform(job)
    lane.close()


async def _closed_lane(run: _Run, lane: _Lane) -> None:
    while (now := time.monotonic()) < run.end_at:
        await lane.perform(_Job(next(run.ids), now))
    lane.close()


# --------------------------------------------------------------------------- worker process


def worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="meshctl benchmark load worker")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--plan", required=True, help="LoadPlan as JSON")
    parser.add_argument("--worker", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    target = Target.parse(args.target)
    plan = LoadPlan.from_json(json.loads(args.plan))
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 2 or line[0] != "start":
        return 2
    start_at = float(line[1])
    # The instrument must not pause on its own. Every attempt stays in memory until the end,
    # so older generations only grow: they are never collected (thresholds 1,000,000).
    # The youngest is collected often, so each pass is short: the loop leaves about one
    # object in a reference cycle per request, and with a threshold of 50,000 one pass freed
    # ~23,000 of them and took 72 ms, in both workers at once (same schedule, same
    # allocations): the "freezes" of docs/latency.md. With 2,000, a pass is a few ms.
    gc.collect()
    gc.freeze()
    gc.set_threshold(2_000, 1_000_000, 1_000_000)
    loop = asyncio.new_event_loop()
    holder: list[_Run] = []

    def listen_for_stop() -> None:
        for command in sys.stdin:
            if command.strip() == "stop" and holder:
                loop.call_soon_threadsafe(holder[0].stop)

    threading.Thread(target=listen_for_stop, daemon=True).start()
    try:
        attempts = loop.run_until_complete(
            run_plan(target, plan, start_at=start_at, worker=args.worker,
                     on_run=holder.append))
    finally:
        loop.close()
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records.to_columns(attempts)))
    tmp.rename(args.out)
    print(f"done {len(attempts)}", flush=True)
    return 0


class LoadRun:
    """A plan run by `workers` worker processes, each given 1/workers of it."""

    def __init__(self, target: Target, plan: LoadPlan, workdir: Path, *, workers: int = 2,
                 bench_dir: Path | None = None, prefix: Sequence[str] = ()) -> None:
        self.target, self.plan, self.workdir, self.workers = target, plan, workdir, workers
        self.prefix = list(prefix)
        """Put before each worker's argv (`taskset -c CPUS`: see `zeroloss.cpus`)."""
        self.bench_dir = bench_dir or Path(__file__).resolve().parents[1]
        self.procs: list[subprocess.Popen[str]] = []
        self.outs: list[Path] = []
        self.start_at = 0.0
        self.start_wall = 0.0

    def start(self, lead_s: float = 0.3, timeout_s: float = 30.0) -> float:
        """Start the workers; the load begins `lead_s` after they are all ready. Returns the
        start (monotonic seconds)."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(self.bench_dir), *filter(None, [os.environ.get("PYTHONPATH")])])}
        share = json.dumps(self.plan.share(self.workers).to_json())
        self.workdir.mkdir(parents=True, exist_ok=True)
        for i in range(self.workers):
            out = self.workdir / f"load-{i}-{os.getpid()}-{time.monotonic_ns()}.json"
            self.outs.append(out)
            self.procs.append(subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "zeroloss.client", "--target",
                 self.target.authority, "--plan", share, "--worker", str(i), "--out", str(out)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env))
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            line = _read_line(proc, deadline)
            if line != "ready":
                self.kill()
                raise RuntimeError(f"load worker {proc.pid} did not start: {line!r}")
        self.start_at = time.monotonic() + lead_s
        self.start_wall = time.time() + lead_s
        for proc in self.procs:
            self._send(proc, f"start {self.start_at!r}")
        return self.start_at

    def stop(self) -> None:
        """End the load now (no request is due after this; those in flight finish)."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                self._send(proc, "stop")

    def wait(self) -> list[Attempt]:
        """Wait for every worker and merge their attempts."""
        limit = self.start_at + self.plan.duration_s + 2 * self.plan.timeout_s + 60
        attempts: list[Attempt] = []
        try:
            for proc, out in zip(self.procs, self.outs, strict=True):
                try:
                    proc.wait(timeout=max(1.0, limit - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"load worker {proc.pid} did not finish") from None
                if proc.returncode != 0 or not out.exists():
                    raise RuntimeError(f"load worker {proc.pid} failed (exit "
                                       f"{proc.returncode})")
                attempts += records.from_columns(json.loads(out.read_text()))
        finally:
            self.kill()
        return attempts

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        for out in self.outs:
            with contextlib.suppress(OSError):
                out.unlink()

    @staticmethod
    def _send(proc: subprocess.Popen[str], line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    out: list[str] = []
    assert proc.stdout is not None
    stdout: IO[str] = proc.stdout
    reader = threading.Thread(target=lambda: out.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(max(0.0, deadline - time.monotonic()))
    return out[0].strip() if out else ""


if __name__ == "__main__":
    sys.exit(worker_main())
