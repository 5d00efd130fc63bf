"""A generation that initializes under SCHED_IDLE gets the normal policy back the moment it
starts serving, not at the supervisor's next LIVE poll.

Envoy starts its workers when its initialization is complete, and its listeners accept from
that moment (`meshctl.envoy.threads`). The main loop polls `/ready` every tick (0.1 s), over
HTTP, from an admin thread that is itself at idle priority: measured on 2 busy cores, the new
generation served for ~100 ms at idle priority before the poll saw LIVE, and the requests it
took then waited 20-80 ms behind every ordinary thread (p50 of that 50 ms bin 40 ms, 2 ms
before). This watcher reads the thread names every 5 ms instead (a directory listing and
a read or two, ~30 us of CPU; the init takes 0.1-0.5 s) and restores the whole process when
the first worker appears. It runs in its own thread because the main loop's tick is shared
with everything else; it only calls `ChildProcess.restore_cpu()`, which is safe to repeat,
and the main loop restores again at LIVE (`Supervisor._mark_live`) for anything it missed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from meshctl.clock import Clock
from meshctl.envoy import threads
from meshctl.manager.process import ChildProcess

log = logging.getLogger(__name__)

POLL_S = 0.005


@dataclass(frozen=True)
class Restored:
    at_mono: float
    moved: int
    refused: int


class InitWatch:
    """Watches one generation born with `ChildProcess.spawn(idle=True)` until its workers
    start (then restores it), it dies, or `stop()`."""

    def __init__(self, process: ChildProcess, epoch: int, clock: Clock,
                 poll_s: float = POLL_S) -> None:
        self.process = process
        self.epoch = epoch
        self.clock = clock
        self.poll_s = poll_s
        self.restored: Restored | None = None
        """Set once, by the watcher thread, when it restored the generation."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"init-watch-{epoch}",
                                        daemon=True)

    def start(self) -> InitWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ends the watch (LIVE, rollback, exit) and waits for the thread: after this,
        `restored` no longer changes."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        names = threads.ThreadNames(self.process.envoy_pid)
        while not self._stop.wait(self.poll_s):
            if not self.process.alive or not names.poll():
                return  # gone; the main loop reaps it
            if names.workers_started():
                moved, refused = self.process.restore_cpu()
                self.restored = Restored(self.clock.monotonic(), moved, refused)
                log.info("epoch %d: workers started; %d thread(s) back to normal priority"
                         "%s", self.epoch, moved, f", {refused} refused" if refused else "")
                return
