"""How the supervisor's loop sleeps and wakes: a self-pipe, and signals that are only recorded.

The loop sleeps in `wait` until its tick passes or something writes to the pipe: a signal
(the pipe is Python's signal wakeup fd, and the handler only appends the signal number: it
never acts, as in gunicorn's arbiter), a control request (`wake`, from the control server's
thread), a child's exit (SIGCHLD). The loop then takes the recorded signals with `signals`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections import deque
from collections.abc import Iterable, Iterator
from types import FrameType
from typing import Any


class Wakeup:
    def __init__(self) -> None:
        self._recorded: deque[int] = deque()
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_handlers: dict[int, Any] = {}
        self._old_fd = -1

    def install(self, signums: Iterable[int]) -> None:
        """Handle these signals by recording them (restored by `close`)."""
        for sig in signums:
            self._old_handlers[sig] = signal.signal(sig, self._record)
        self._old_fd = signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def close(self) -> None:
        signal.set_wakeup_fd(self._old_fd)
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        os.close(self._r)
        os.close(self._w)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        self._recorded.append(signum)  # only record: the loop acts

    def wake(self) -> None:
        """From any thread: end the loop's current `wait` now."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"c")

    def wait(self, timeout_s: float) -> None:
        with contextlib.suppress(InterruptedError):
            ready, _, _ = select.select([self._r], [], [], timeout_s)
            if ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._r, 4096):
                        pass

    def signals(self) -> Iterator[int]:
        """The signals recorded since the last look, oldest first."""
        while self._recorded:
            yield self._recorded.popleft()
