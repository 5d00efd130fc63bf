"""The longest time without a LIVE generation, from the supervisor's status polled every
50 ms in a thread of its own.

A generation is LIVE when the status says what the health port would (`snapshot.ready`: a
serving phase and a live generation). While no supervisor answers (killed, not yet started
again), the last live generation counts as LIVE as long as its process runs: on a host it
serves without its supervisor, which is the point of the keeper.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from meshctl import errors
from meshctl.manager import operations, snapshot

POLL_S = 0.05


@dataclass(frozen=True)
class Gap:
    """A time without a LIVE generation (time.monotonic seconds)."""

    start_s: float
    end_s: float

    @property
    def length_s(self) -> float:
        return self.end_s - self.start_s


class LiveWatch:
    def __init__(self, state_dir: Path, poll_s: float = POLL_S) -> None:
        self.state_dir, self.poll_s = state_dir, poll_s
        self.gaps: list[Gap] = []
        self._since: float | None = None
        """When the current gap began; None while LIVE."""
        self._last_live: tuple[int, float] | None = None
        """The last live generation's pid and start time."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-watch", daemon=True)

    def start(self) -> LiveWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._since is not None:
            self.gaps.append(Gap(self._since, time.monotonic()))
            self._since = None

    def longest(self, start_s: float = 0.0, end_s: float = float("inf")) -> Gap | None:
        """The longest gap that overlaps [start_s, end_s), the one still open included."""
        gaps = list(self.gaps)
        if self._since is not None:
            gaps.append(Gap(self._since, time.monotonic()))
        inside = [g for g in gaps if g.end_s >= start_s and g.start_s < end_s]
        return max(inside, key=lambda g: g.length_s, default=None)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            now = time.monotonic()
            live = self._live()
            if live and self._since is not None:
                self.gaps.append(Gap(self._since, now))
                self._since = None
            elif not live and self._since is None:
                self._since = now

    def _live(self) -> bool:
        try:
            snap = operations.status(self.state_dir)
        except errors.MeshctlError:
            return self._last_live is not None and _running(*self._last_live)
        if "live" not in snap or "phase" not in snap:
            return False  # a supervisor still starting answers before its first snapshot
        ready, _ = snapshot.ready(snap)
        live = snap["live"]
        if ready and live is not None and live["create_time"] is not None:
            self._last_live = (live["pid"], live["create_time"])
        return ready


def _running(pid: int, create_time: float) -> bool:
    with contextlib.suppress(psutil.Error):
        proc = psutil.Process(pid)
        return (abs(proc.create_time() - create_time) < 1.0
                and proc.status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD))
    return False
