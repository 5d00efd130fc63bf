"""The Ready window of a swap (`meshctl.podswap.readiness`): NotReady seconds, flips and their
times, from the pod objects meshctl reads, on a clock the test moves."""

from __future__ import annotations

from typing import Any

from meshctl.clock import FakeClock
from meshctl.podswap.readiness import ReadyWindow, ready_condition


def pod(ready: bool | None, since: str = "2026-12-07T09:00:00Z") -> dict[str, Any]:
    if ready is None:
        return {"status": {}}
    return {"status": {"conditions": [
        {"type": "ContainersReady", "status": str(ready)},
        {"type": "Ready", "status": str(ready), "lastTransitionTime": since}]}}


def test_the_ready_condition_is_read_with_its_transition_time() -> None:
    assert ready_condition(pod(True, "T1")) == (True, "T1")
    assert ready_condition(pod(None)) is None


def test_two_flips_are_counted_and_their_not_ready_seconds_summed() -> None:
    clock = FakeClock()
    window = ReadyWindow(clock)
    window.observe(pod(True))
    clock.advance(1.0)
    window.observe(pod(False, "T1"))
    clock.advance(0.4)
    window.observe(pod(False, "T1"))  # another state, the same condition: no change
    clock.advance(0.35)
    window.observe(pod(True, "T2"))
    clock.advance(2.0)
    window.observe(pod(False, "T3"))
    clock.advance(0.5)
    window.observe(pod(True, "T4"))
    clock.advance(1.0)
    report = window.to_json()
    assert report["not_ready_s"] == 1.25
    assert report["ready_flips"] == 2
    assert report["ready_at_start"] is True and report["ready_at_end"] is True
    assert [(t["ready"], t["seen_s"], t["recorded"]) for t in report["transitions"]] == [
        (False, 1.0, "T1"), (True, 1.75, "T2"), (False, 3.75, "T3"), (True, 4.25, "T4")]
    assert report["transitions"][0]["seen_at"].endswith("Z")


def test_a_pod_still_not_ready_at_the_end_counts_until_the_end() -> None:
    clock = FakeClock()
    window = ReadyWindow(clock)
    window.observe(pod(True))
    clock.advance(1.0)
    window.observe(pod(False, "T1"))
    clock.advance(2.0)
    report = window.to_json()
    assert report["not_ready_s"] == 2.0 and report["ready_at_end"] is False
    assert window.to_json(ended_s=clock.monotonic() - 1.5)["not_ready_s"] == 0.5


def test_a_flip_and_back_between_two_reads_is_known_from_the_newer_transition_time() -> None:
    clock = FakeClock()
    window = ReadyWindow(clock)
    window.observe(pod(True, "T0"))
    clock.advance(3.0)
    window.observe(pod(True, "T2"))  # Ready again, since T2: it was NotReady meanwhile
    report = window.to_json()
    assert report["ready_flips"] == 1
    assert [t["ready"] for t in report["transitions"]] == [False, True]
    assert report["not_ready_s"] == 0.0  # unseen: its length is not known to meshctl


def test_a_pod_without_conditions_changes_nothing() -> None:
    window = ReadyWindow(FakeClock())
    window.observe(pod(None))
    assert window.to_json() == {"not_ready_s": 0.0, "ready_flips": 0, "ready_at_start": None,
                                "ready_at_end": None, "transitions": []}
