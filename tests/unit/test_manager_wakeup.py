"""The loop's wakeup: signals only recorded, a wake from another thread ends a wait at once."""

from __future__ import annotations

import os
import signal
import threading
import time

from meshctl.manager.wakeup import Wakeup


def test_a_signal_is_only_recorded_and_wakes_the_wait() -> None:
    wakeup = Wakeup()
    wakeup.install([signal.SIGUSR2])
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        started = time.monotonic()
        wakeup.wait(5.0)
        assert time.monotonic() - started < 2.0
        assert list(wakeup.signals()) == [signal.SIGUSR2]
        assert list(wakeup.signals()) == []
    finally:
        wakeup.close()
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


def test_a_wake_from_another_thread_ends_the_wait_at_once() -> None:
    wakeup = Wakeup()
    try:
        threading.Timer(0.05, wakeup.wake).start()
        started = time.monotonic()
        wakeup.wait(5.0)
        assert time.monotonic() - started < 2.0
    finally:
        wakeup.close()
