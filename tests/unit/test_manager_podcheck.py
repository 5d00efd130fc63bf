"""`meshctl pod-check`'s verdict (`meshctl.manager.podcheck.judge`, pure): when a slot's
handover is done, failed, or still under way."""

from __future__ import annotations

from typing import Any

from meshctl.exitcodes import ExitCode
from meshctl.manager.pod import LedgerData
from meshctl.manager.podcheck import Verdict, judge


def ledger(**gens: dict[str, Any]) -> LedgerData:
    return {"generations": {k.removeprefix("g"): v for k, v in gens.items()}}  # type: ignore[misc]


def test_done_when_the_slots_generation_is_live_and_the_previous_one_has_exited() -> None:
    data = ledger(g0={"slot": "a", "state": "exited"}, g1={"slot": "e1", "state": "live"})
    j = judge(data, "e1", alive={"a", "e1"}, phase="running")
    assert (j.verdict, j.exit_code) == (Verdict.DONE, ExitCode.OK)
    assert j.detail == "epoch 1 in slot e1 is LIVE; epoch 0 (slot a) has exited"


def test_waiting_while_the_previous_generation_drains() -> None:
    data = ledger(g0={"slot": "a", "state": "draining"}, g1={"slot": "e1", "state": "live"})
    j = judge(data, "e1", alive={"a", "e1"}, phase="running")
    assert (j.verdict, j.exit_code) == (Verdict.WAITING, ExitCode.TIMEOUT)
    assert "epoch 0 in slot a is draining" in j.detail


def test_a_draining_entry_of_a_slot_whose_supervisor_is_gone_does_not_hold_it_up() -> None:
    data = ledger(g0={"slot": "e1", "state": "draining"}, g1={"slot": "e2", "state": "live"})
    assert judge(data, "e2", alive={"a", "e2"}, phase="running").verdict is Verdict.DONE


def test_waiting_while_starting_and_until_its_supervisor_says_running() -> None:
    starting = ledger(g0={"slot": "a", "state": "live"}, g1={"slot": "e1", "state": "starting"})
    assert judge(starting, "e1", {"a", "e1"}, "starting").verdict is Verdict.WAITING
    live = ledger(g0={"slot": "a", "state": "exited"}, g1={"slot": "e1", "state": "live"})
    assert judge(live, "e1", {"a", "e1"}, None).verdict is Verdict.WAITING
    assert judge(ledger(), "e1", {"a", "e1"}, None).verdict is Verdict.WAITING


def test_failed_when_the_new_generation_failed_with_its_reason() -> None:
    data = ledger(g0={"slot": "a", "state": "live"},
                  g1={"slot": "e1", "state": "failed", "exit": "exit code 1"})
    j = judge(data, "e1", alive={"a"}, phase=None)
    assert (j.verdict, j.exit_code) == (Verdict.FAILED, ExitCode.ROLLED_BACK)
    assert j.detail == ("epoch 1 in slot e1 never became LIVE: exit code 1; the previous "
                        "generation keeps serving")


def test_a_slot_with_no_supervisor_yet_is_waited_for_only_a_grace_period() -> None:
    data = ledger(g0={"slot": "a", "state": "live"})
    assert judge(data, "e1", {"a"}, None, waited_s=2.0).verdict is Verdict.WAITING
    assert judge(data, "e1", {"a"}, None, waited_s=10.0).verdict is Verdict.FAILED


def test_failed_when_the_slots_supervisor_is_gone_without_a_live_generation() -> None:
    assert judge(ledger(g0={"slot": "a", "state": "live"}), "e1", {"a"}, None).verdict \
        is Verdict.FAILED
    gone = ledger(g0={"slot": "a", "state": "exited"}, g1={"slot": "e1", "state": "live"})
    assert judge(gone, "e1", {"a"}, None).verdict is Verdict.FAILED


def test_failed_when_a_newer_generation_of_another_slot_took_over() -> None:
    data = ledger(g1={"slot": "e1", "state": "draining"}, g2={"slot": "e2", "state": "live"})
    j = judge(data, "e1", {"e1", "e2"}, "handing_over")
    assert j.verdict is Verdict.FAILED and "epoch 2, slot e2" in j.detail
