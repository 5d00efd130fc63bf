"""`meshctl rollout --handover ephemeral`'s pure parts: the record naming an ephemeral slot and
its check container, where a handover stands and what each state of the pod asks for (a state
that predates our own write included), the plan of a handover an earlier run left, and the
verdict as the single-pod path reads it."""

from __future__ import annotations

import pytest
from tests.unit.test_images_plan import NEW, running_pod
from tests.unit.test_podswap_ephemeral import with_ephemeral

from meshctl import errors
from meshctl.podswap import ephemeral
from meshctl.podswap.ephemeral import HandoverEnd, Stage
from meshctl.podswap.plan import Outcome, Progress
from meshctl.rollout import ephemeral as handovers
from meshctl.rollout.ephemeral import Next, Written
from meshctl.rollout.record import ROLLOUT, PodPhase, RolloutRecord, decode, transition


def record(slot: str = "e3", check: str | None = "meshctl-check-3") -> RolloutRecord:
    return RolloutRecord(id="r-1", image=NEW, state=PodPhase.UPGRADING, slot=slot,
                         from_image="old:1", container_id=None, canary=False, time="t",
                         check=check)


def test_a_record_names_an_ephemeral_slot_and_its_check_container() -> None:
    written = record()
    assert written.to_json()["check"] == "meshctl-check-3"
    assert decode({ROLLOUT: written.encode()}) == written
    assert written.ephemeral and not record("b", None).ephemeral
    assert decode({ROLLOUT: record("b", None).encode()}) == record("b", None)


@pytest.mark.parametrize(("slot", "check"), [
    ("e3", None), ("e3", "meshctl-check-4"), ("c", None), ("e0", "meshctl-check-0")])
def test_a_record_with_another_slot_or_a_check_not_its_slot_s_is_no_record(
        slot: str, check: str | None) -> None:
    assert decode({ROLLOUT: record(slot, check).encode()}) is None


def test_an_ephemeral_handover_ends_from_upgrading_with_nothing_to_retire() -> None:
    assert transition(PodPhase.UPGRADING, PodPhase.UPGRADED) is PodPhase.UPGRADED
    assert transition(PodPhase.UPGRADING, PodPhase.INCOMPLETE) is PodPhase.INCOMPLETE


def test_each_state_of_the_pod_asks_for_the_next_step() -> None:
    pod = running_pod()
    plan = ephemeral.plan_ephemeral(pod, NEW)
    starting = with_ephemeral(pod, "meshctl-e1", NEW, {"waiting": {"reason": "Pulling"}})
    running = with_ephemeral(pod, "meshctl-e1", NEW, {"running": {}})
    checking = with_ephemeral(running, "meshctl-check-1", NEW, {"running": {}})
    passed = with_ephemeral(running, "meshctl-check-1", NEW, {"terminated": {"exitCode": 0}})
    failed = with_ephemeral(running, "meshctl-check-1", NEW, {"terminated": {"exitCode": 8}})
    unsure = with_ephemeral(running, "meshctl-check-1", NEW, {"terminated": {"exitCode": 10}})
    cases = [(pod, Written.RECORD, Next.ADD_SLOT), (starting, Written.SLOT, Next.WAIT),
             (running, Written.SLOT, Next.ADD_CHECK), (checking, Written.CHECK, Next.WAIT),
             (passed, Written.CHECK, Next.FINISH), (failed, Written.CHECK, Next.ROLL_BACK),
             (unsure, Written.CHECK, Next.NOT_CONFIRMED)]
    for state, written, wanted in cases:
        assert handovers.decide(state, plan, written).next is wanted, wanted


def test_a_state_from_before_our_last_write_is_waited_past_not_done_again() -> None:
    pod = running_pod()
    plan = ephemeral.plan_ephemeral(pod, NEW)
    running = with_ephemeral(pod, "meshctl-e1", NEW, {"running": {}})
    assert handovers.decide(pod, plan, Written.SLOT).next is Next.WAIT
    assert handovers.decide(running, plan, Written.CHECK).next is Next.WAIT


def test_a_resumed_handover_is_planned_from_its_record_and_continues_where_it_stopped() -> None:
    pod = running_pod()
    left = with_ephemeral(pod, "meshctl-e1", NEW, {"running": {}})
    plan = ephemeral.resumed_plan(left, "e1", "old:1", NEW)
    assert (plan.old_slot, plan.container, plan.check_container) == (
        "a", "meshctl-e1", "meshctl-check-1")
    assert handovers.written_in(pod, plan) is Written.RECORD
    assert handovers.written_in(left, plan) is Written.SLOT
    assert handovers.decide(left, plan, handovers.written_in(left, plan)).next \
        is Next.ADD_CHECK
    with pytest.raises(errors.PreflightFailed):
        ephemeral.resumed_plan(pod, "b", "old:1", NEW)


def test_the_verdict_reads_the_check_s_exit_code_as_the_single_pod_path_does() -> None:
    pod = with_ephemeral(running_pod(), "meshctl-e1", NEW, {"running": {}})
    plan = ephemeral.plan_ephemeral(running_pod(), NEW)
    where = ephemeral.follow(pod, plan)
    assert where.stage is Stage.RUNNING
    crashed = with_ephemeral(pod, "meshctl-check-1", NEW, {"terminated": {"exitCode": 1}})
    assert ephemeral.judge(crashed, plan, ephemeral.follow(crashed, plan).progress) \
        is HandoverEnd.NOT_CONFIRMED
    ended = with_ephemeral(running_pod(), "meshctl-e1", NEW, {"terminated": {"exitCode": 9}})
    assert ephemeral.judge(ended, plan, ephemeral.follow(ended, plan).progress) \
        is HandoverEnd.ROLLED_BACK
    assert ephemeral.judge(pod, plan, Progress(Outcome.WAITING, "")) \
        is HandoverEnd.NOT_CONFIRMED


def test_the_record_patch_is_undone_to_what_the_pod_had() -> None:
    pod = running_pod()
    plan = ephemeral.plan_ephemeral(pod, NEW)
    ops = handovers.unrecord_ops(pod)
    assert {op["op"] for op in ops} == {"remove"}
    assert handovers.record_ops(pod, plan, record("e1", "meshctl-check-1"))[-1]["path"] \
        == "/metadata/annotations/meshctl.io~1rollout"
