"""Ending a process in named steps: ask (SIGTERM), wait, kill (SIGKILL), wait, report.

Driven by the supervisor's loop (`tick()`), measured on the injectable clock; each step is
logged, so an operator can see exactly how a generation ended.
"""

from __future__ import annotations

import enum
import logging
import signal

from meshctl.clock import Clock, Deadline
from meshctl.manager.process import ChildProcess

log = logging.getLogger(__name__)

KILL_WAIT_S = 5.0


class StopStep(enum.StrEnum):
    IDLE = "idle"
    ASKED = "asked"
    """SIGTERM sent; waiting up to the grace period."""
    KILLED = "killed"
    """SIGKILL sent; waiting for the kernel to reap it."""
    DONE = "done"
    STUCK = "stuck"
    """Still there after SIGKILL: reported, nothing more can be done from here."""


class Stopper:
    def __init__(self, process: ChildProcess, grace_s: float, clock: Clock, label: str) -> None:
        self.process = process
        self.grace_s = grace_s
        self.clock = clock
        self.label = label
        self.step = StopStep.IDLE
        self.killed = False
        self._deadline: Deadline | None = None

    def start(self, *, ask: bool = True) -> None:
        """`ask=False` skips SIGTERM: for a generation that never became LIVE. Envoy, on
        SIGTERM, asks its hot-restart parent to terminate too (it assumes the parent is
        already draining), so a SIGTERM to a failed new generation would take the old,
        serving one down with it."""
        if self.step is not StopStep.IDLE:
            return
        if not ask:
            log.info("%s: never LIVE, killing (SIGKILL): a SIGTERM would end its parent too",
                     self.label)
            self.process.send(signal.SIGKILL)
            self.killed = True
            self.step = StopStep.KILLED
            self._deadline = Deadline(self.clock, KILL_WAIT_S)
            return
        log.info("%s: asking to stop (SIGTERM), grace %.1fs", self.label, self.grace_s)
        self.process.send(signal.SIGTERM)
        self.step = StopStep.ASKED
        self._deadline = Deadline(self.clock, self.grace_s)

    def tick(self) -> None:
        if self.step in (StopStep.IDLE, StopStep.DONE, StopStep.STUCK):
            return
        if not self.process.alive:
            log.info("%s: stopped (%s)", self.label, self.process.describe_exit())
            self.step = StopStep.DONE
            return
        assert self._deadline is not None
        if not self._deadline.expired():
            return
        if self.step is StopStep.ASKED:
            log.warning("%s: still running after %.1fs grace, killing (SIGKILL)",
                        self.label, self.grace_s)
            self.process.send(signal.SIGKILL)
            self.killed = True
            self.step = StopStep.KILLED
            self._deadline = Deadline(self.clock, KILL_WAIT_S)
        elif self.step is StopStep.KILLED:
            log.error("%s: pid %d survived SIGKILL for %.0fs", self.label, self.process.pid,
                      KILL_WAIT_S)
            self.step = StopStep.STUCK
