"""The look before a connection reading (meshctl.drain.activity): a draining generation that
used more than its share of a core since the last look is serving and is not read; unknown is
never busy; the deadline always reads. `cpu_seconds` on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

from meshctl.drain.activity import BUSY_SHARE, MIN_BUSY_CPU_S, ActivityGate, cpu_seconds
from meshctl.drain.policy import DrainPolicy
from meshctl.drain.window import DrainWindow


def test_the_first_look_always_reads_there_is_nothing_to_compare_with() -> None:
    gate = ActivityGate()
    assert gate.allow(0.0, 5.0)
    assert gate.to_json() == {"taken": 1, "skipped": 0}


def test_a_generation_that_used_more_than_its_share_of_a_core_is_not_read() -> None:
    gate = ActivityGate()
    assert gate.allow(0.0, 1.0)
    assert not gate.allow(1.0, 1.0 + BUSY_SHARE)  # 8 % of a core over 1 s: serving
    assert not gate.allow(2.0, 1.5)
    assert gate.allow(3.0, 1.5 + BUSY_SHARE / 2)  # a trickle: read (it may be nearly idle)
    assert gate.allow(3.25, 1.5 + BUSY_SHARE / 2 + 0.001)
    assert gate.to_json() == {"taken": 3, "skipped": 2}


def test_over_a_short_interval_the_clock_tick_is_the_floor() -> None:
    gate = ActivityGate()
    gate.allow(0.0, 1.0)
    # 0.25 s at 8 % would be 20 ms: exactly the 2-tick floor; one tick (10 ms) is noise.
    assert gate.allow(0.25, 1.0 + MIN_BUSY_CPU_S / 2)
    assert not gate.allow(0.5, 1.0 + MIN_BUSY_CPU_S / 2 + MIN_BUSY_CPU_S)
    # A look soon after the last: the floor still holds (no skip on a single tick).
    assert gate.allow(0.51, 1.0 + 1.5 * MIN_BUSY_CPU_S + 0.01)


def test_an_unknown_cpu_clock_never_skips_a_reading() -> None:
    gate = ActivityGate()
    assert gate.allow(0.0, 1.0)
    assert gate.allow(1.0, None)
    assert gate.allow(2.0, 9.0)  # compared with the unknown look: nothing to compare, read
    assert gate.skipped == 0


def test_the_deadline_reads_even_a_busy_generation() -> None:
    gate = ActivityGate()
    gate.allow(0.0, 1.0)
    assert gate.allow(1.0, 2.0, force=True)
    assert gate.to_json() == {"taken": 2, "skipped": 0}


def test_each_drain_window_has_its_own_looks() -> None:
    policy = DrainPolicy()
    first, second = DrainWindow(policy, 0.0), DrainWindow(policy, 10.0)
    first.readings.allow(0.0, 1.0)
    assert second.readings.taken == 0 and second.readings.last_cpu_s is None


def test_cpu_seconds_follows_a_real_process_and_is_none_once_it_is_gone() -> None:
    spin = subprocess.Popen([sys.executable, "-c",
                             "import time\nend = time.process_time() + 0.3\n"
                             "while time.process_time() < end: pass\ntime.sleep(30)"])
    try:
        first = cpu_seconds(spin.pid)
        assert first is not None
        deadline = time.monotonic() + 10
        while (cpu_seconds(spin.pid) or 0.0) - first < 0.15 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (cpu_seconds(spin.pid) or 0.0) - first >= 0.15
    finally:
        spin.kill()
        spin.wait()
    assert cpu_seconds(spin.pid) is None
