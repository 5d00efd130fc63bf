"""The drain window's decision (`meshctl.drain.window`): a pure function of time and the old
generation's open client connections."""

from __future__ import annotations

import pytest

from meshctl.drain.policy import DrainPolicy
from meshctl.drain.window import DrainWindow, Verdict

START = 1000.0


@pytest.fixture
def window() -> DrainWindow:
    return DrainWindow(DrainPolicy(drain_min_s=2, drain_max_s=10), started_at=START)


def test_a_drain_window_never_ends_before_drain_min_even_when_idle(window: DrainWindow) -> None:
    for t in (0.0, 0.5, 1.999):
        assert window.decide(START + t, connections=0) is Verdict.WAIT


def test_an_idle_generation_ends_the_window_once_drain_min_has_passed(
    window: DrainWindow,
) -> None:
    assert window.decide(START + 1.9, connections=0) is Verdict.WAIT
    assert window.decide(START + 2.0, connections=0) is Verdict.IDLE
    assert window.decide(START + 9.9, connections=0) is Verdict.IDLE


def test_one_zero_reading_is_not_enough_to_call_the_generation_idle(
    window: DrainWindow,
) -> None:
    assert window.decide(START + 3.0, connections=2) is Verdict.WAIT
    assert window.decide(START + 3.1, connections=0) is Verdict.WAIT
    assert window.decide(START + 3.2, connections=1) is Verdict.WAIT
    assert window.decide(START + 3.3, connections=0) is Verdict.WAIT
    assert window.decide(START + 3.4, connections=0) is Verdict.IDLE


def test_an_unreadable_count_resets_the_idle_streak(window: DrainWindow) -> None:
    assert window.decide(START + 3.0, connections=0) is Verdict.WAIT
    assert window.decide(START + 3.1, connections=None) is Verdict.WAIT
    assert window.decide(START + 3.2, connections=0) is Verdict.WAIT


def test_open_connections_keep_the_window_open_until_drain_max(window: DrainWindow) -> None:
    for t in (0.0, 2.0, 5.0, 9.999):
        assert window.decide(START + t, connections=3) is Verdict.WAIT


def test_drain_max_ends_the_window_whatever_the_connections(window: DrainWindow) -> None:
    for connections in (0, 1, 500, None):
        assert window.decide(START + 10.0, connections) is Verdict.DEADLINE
        assert window.decide(START + 60.0, connections) is Verdict.DEADLINE


def test_unknown_connections_are_never_taken_for_idle(window: DrainWindow) -> None:
    for t in (0.0, 2.0, 9.999):
        assert window.decide(START + t, connections=None) is Verdict.WAIT


def test_a_zero_minimum_ends_an_idle_window_at_once() -> None:
    window = DrainWindow(DrainPolicy(drain_min_s=0, drain_max_s=10), started_at=START,
                         idle_samples=1)
    assert window.decide(START, connections=0) is Verdict.IDLE


def test_a_window_whose_minimum_is_its_maximum_ends_by_deadline() -> None:
    window = DrainWindow(DrainPolicy(drain_min_s=5, drain_max_s=5), started_at=START)
    assert window.decide(START + 4.9, connections=0) is Verdict.WAIT
    assert window.decide(START + 5, connections=0) is Verdict.DEADLINE


def test_a_clock_reading_before_the_start_counts_as_no_time_elapsed(window: DrainWindow) -> None:
    assert window.elapsed(START - 5) == 0.0
    assert window.decide(START - 5, connections=0) is Verdict.WAIT
    assert window.time_left(START - 5) == 10.0


def test_time_left_counts_down_to_zero_and_stays_there(window: DrainWindow) -> None:
    assert window.time_left(START) == 10.0
    assert window.time_left(START + 3.5) == 6.5
    assert window.time_left(START + 10) == 0.0
    assert window.time_left(START + 100) == 0.0


def test_elapsed_is_measured_from_the_start(window: DrainWindow) -> None:
    assert window.elapsed(START + 7.25) == 7.25


def test_readings_start_when_two_in_a_row_can_reach_the_minimum(window: DrainWindow) -> None:
    first = window.first_useful_reading(0.25)
    assert first == START + 1.75
    # Read from there at the interval: the window still ends at drain_min_s, as it would
    # with readings from the start.
    assert window.decide(first, connections=0) is Verdict.WAIT
    assert window.decide(first + 0.25, connections=0) is Verdict.IDLE


def test_with_no_minimum_readings_start_at_once() -> None:
    window = DrainWindow(DrainPolicy(drain_min_s=0.1, drain_max_s=10), started_at=START)
    assert window.first_useful_reading(0.25) == START
    single = DrainWindow(DrainPolicy(drain_min_s=2, drain_max_s=10), started_at=START,
                         idle_samples=1)
    assert single.first_useful_reading(0.25) == START + 2.0
