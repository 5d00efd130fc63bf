"""The pod ledger two slot supervisors share (`meshctl.manager.pod`), on a real dir and real
flocks."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.errors import StateDirError
from meshctl.manager.pod import GenState, PodLedger, is_ephemeral, is_slot, other_slot


@pytest.fixture
def pod_dir(tmp_path: Path) -> Path:
    for slot in ("a", "b"):
        (tmp_path / f"slot-{slot}").mkdir()
    return tmp_path


@pytest.fixture
def slot_b_running(pod_dir: Path) -> Iterator[None]:
    """Slot b's supervisor holds its lock, as it does for its whole life."""
    fd = os.open(pod_dir / "slot-b" / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield
    os.close(fd)


def test_the_other_slot_of_a_is_b_and_of_b_is_a() -> None:
    assert (other_slot("a"), other_slot("b")) == ("b", "a")


def test_an_unknown_slot_is_refused(pod_dir: Path) -> None:
    with pytest.raises(ValueError, match="slot must be one of a, b"):
        PodLedger(pod_dir, "c")


def test_a_slot_is_alive_exactly_while_its_supervisor_holds_its_lock(pod_dir: Path) -> None:
    ledger = PodLedger(pod_dir, "a")
    assert not ledger.slot_alive("b")
    fd = os.open(pod_dir / "slot-b" / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    assert ledger.slot_alive("b")
    os.close(fd)
    assert not ledger.slot_alive("b")


def test_a_live_generation_of_the_other_running_slot_is_found(
        pod_dir: Path, slot_b_running: None) -> None:
    PodLedger(pod_dir, "b").record(3, GenState.LIVE, pid=42)
    assert PodLedger(pod_dir, "a").other_live() == (3, {"slot": "b", "state": "live",
                                                        "pid": 42})


def test_a_live_generation_whose_supervisor_is_gone_is_not_live(pod_dir: Path) -> None:
    PodLedger(pod_dir, "b").record(3, GenState.LIVE, pid=42)
    assert PodLedger(pod_dir, "a").other_live() is None


def test_its_own_live_generation_is_not_the_other_slots(
        pod_dir: Path, slot_b_running: None) -> None:
    PodLedger(pod_dir, "a").record(1, GenState.LIVE)
    assert PodLedger(pod_dir, "a").other_live() is None


def test_the_newest_newer_generation_of_the_other_slot_is_reported(pod_dir: Path) -> None:
    a, b = PodLedger(pod_dir, "a"), PodLedger(pod_dir, "b")
    a.record(1, GenState.LIVE)
    b.record(2, GenState.FAILED)
    b.record(3, GenState.STARTING)
    assert a.newer(1) == (3, {"slot": "b", "state": "starting"})
    assert a.newer(3) is None
    assert b.newer(0) == (1, {"slot": "a", "state": "live"})


def test_records_update_one_entry_and_the_ledger_keeps_the_last_twelve(pod_dir: Path) -> None:
    a = PodLedger(pod_dir, "a")
    for epoch in range(20):
        a.record(epoch, GenState.STARTING, pid=epoch)
        a.record(epoch, GenState.LIVE)
    gens = json.loads((pod_dir / "pod.json").read_text())["generations"]
    assert sorted(gens, key=int) == [str(e) for e in range(8, 20)]
    assert gens["19"] == {"slot": "a", "state": "live", "pid": 19}
    assert a.state_of(19) == "live" and a.state_of(2) is None


def test_a_corrupt_ledger_is_an_error_and_is_left_alone(pod_dir: Path) -> None:
    (pod_dir / "pod.json").write_text("{not json")
    with pytest.raises(StateDirError, match="cannot be read"):
        PodLedger(pod_dir, "a").read()
    assert (pod_dir / "pod.json").read_text() == "{not json"


def hold_lock(pod_dir: Path, slot: str) -> int:
    """A running supervisor of `slot`: its state dir and its lock, held."""
    (pod_dir / f"slot-{slot}").mkdir(exist_ok=True)
    fd = os.open(pod_dir / f"slot-{slot}" / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_ephemeral_slots_are_e_and_a_positive_number_and_nothing_else_is_a_slot() -> None:
    assert all(is_slot(s) for s in ("a", "b", "e1", "e12", "e999999"))
    assert not any(is_slot(s) for s in ("c", "e", "e0", "e01", "e1000000", "E1", "e1/..", ""))
    assert [is_ephemeral(s) for s in ("a", "b", "e1")] == [False, False, True]


def test_an_ephemeral_slot_finds_the_live_generation_of_a_regular_slot_and_vice_versa(
        pod_dir: Path, slot_b_running: None) -> None:
    PodLedger(pod_dir, "b").record(3, GenState.LIVE, pid=42)
    assert PodLedger(pod_dir, "e1").other_live() == (3, {"slot": "b", "state": "live",
                                                         "pid": 42})
    fd = hold_lock(pod_dir, "e1")
    try:
        PodLedger(pod_dir, "e1").record(4, GenState.LIVE, pid=43)
        assert PodLedger(pod_dir, "b").newer(3) == (4, {"slot": "e1", "state": "live",
                                                        "pid": 43})
        assert PodLedger(pod_dir, "a").other_live() == (4, {"slot": "e1", "state": "live",
                                                            "pid": 43})
    finally:
        os.close(fd)


def test_the_other_slots_alive_are_every_slot_whose_supervisor_holds_its_lock(
        pod_dir: Path) -> None:
    e1, e2 = hold_lock(pod_dir, "e1"), hold_lock(pod_dir, "e2")
    (pod_dir / "slot-junk").mkdir()
    os.close(e1)
    try:
        assert PodLedger(pod_dir, "a").others_alive() == ["e2"]
        assert PodLedger(pod_dir, "e2").others_alive() == []
    finally:
        os.close(e2)


def test_a_regular_slot_is_orphaned_only_by_a_newest_ephemeral_generation_nobody_runs(
        pod_dir: Path) -> None:
    a = PodLedger(pod_dir, "a")
    assert a.orphaned_by() is None  # an empty ledger
    a.record(0, GenState.EXITED)
    PodLedger(pod_dir, "e1").record(1, GenState.LIVE)
    assert a.orphaned_by() == "e1"  # e1's supervisor is gone: nothing restarts it
    fd = hold_lock(pod_dir, "e1")
    try:
        assert a.orphaned_by() is None  # it runs
    finally:
        os.close(fd)
    PodLedger(pod_dir, "b").record(2, GenState.LIVE)
    assert a.orphaned_by() is None  # slot b's container: the kubelet restarts it
